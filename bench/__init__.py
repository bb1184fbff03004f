"""The benchmark harness behind `make bench`: seeds the real stack, loads the API and the worker, reports."""
