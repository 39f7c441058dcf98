"""Getting a mirror to its users: bundles for air gaps, the static server, rclone publishing, conda recipes."""
