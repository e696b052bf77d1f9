"""Fuzzing of the code that reads hostile input: hypothesis properties, atheris harnesses, seed corpus."""
