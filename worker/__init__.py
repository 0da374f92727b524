"""The trainjobs worker: claims jobs over HTTP and runs each in its own child process."""
