"""The README's result sections, one module per benchmark family; benchmarks/readme.py puts them in README.md."""
