"""One file per framework: its vocabulary rows and the matchers over them.

``torch`` (the core), ``lightning`` (Lightning and Fabric), ``naming`` (what names say when
bindings are silent). The recognizer asks these modules what a call is; a new framework adds a
file here and its fixtures.
"""
