"""genq command line: `genq up | api | worker | chat | fetch-model`."""

__version__ = "0.1.0"
