"""Native helpers loaded with ctypes (see runtime.py); nothing here is imported as a Python module."""
