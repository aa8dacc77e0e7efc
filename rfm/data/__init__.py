"""Datasets: LeRobotDataset v3.0 read/write (v2.1 read), HDF5 import, and training windows.

Import what you need from the submodules (`rfm.data.lerobot`, `rfm.data.windows`, `rfm.data.hdf5`), so that
`import rfm.data` stays cheap.
"""
