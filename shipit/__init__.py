"""shipit: Capistrano-style deploys that take care of the jobs running on your hosts."""

__version__ = "0.1.0"
