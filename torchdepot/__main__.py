from torchdepot.cli import main

main()
