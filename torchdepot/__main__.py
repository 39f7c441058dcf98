from torchdepot.cli import entry

entry()
