"""The web console: page shells the gateway serves, and the browser code that fills them.

Every figure a page shows is fetched in the browser from the public API with the signed-in
caller's own credential, so the console can show nothing a script with that key could not read.
"""
