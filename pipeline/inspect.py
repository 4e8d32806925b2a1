"""`python -m pipeline.inspect`: kept at this path; the code is in pipeline.commands.inspect."""
from pipeline.commands.inspect import main

if __name__ == "__main__":
    main()
