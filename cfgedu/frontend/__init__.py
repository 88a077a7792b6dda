"""The notebooks' front end: matplotlib figures (functions that draw on an ax) and ipywidgets slider panels."""
