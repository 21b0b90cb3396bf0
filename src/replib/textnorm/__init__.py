"""Text normalisation: turning varied surface text into canonical forms (symbolic methods).

Import the modules themselves (``from replib.textnorm import dahsf``).
"""
