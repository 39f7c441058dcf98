"""Verify lockfiles: install each into a throwaway environment from the mirror only (hashes
checked) and smoke-test torch in it; targets this machine cannot run are resolved only."""
