"""Imports every backend module so each registers itself with :mod:`dsr_deploy.runtime.base`."""
