"""The book machinery: find chapters, execute them with papermill (cached), render with jupyter-book."""
