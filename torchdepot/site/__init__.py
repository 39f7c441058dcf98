"""What a mirror tells its users: the landing page and the CI matrix."""
