"""The worker side: arq settings, thin tasks, and the plain functions that execute runs."""
