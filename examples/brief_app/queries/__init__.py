"""Query objects (the brief's ``app/queries``): named reads the jobs call."""
