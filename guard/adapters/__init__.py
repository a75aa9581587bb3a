"""The act layer: each adapter puts the guard into a tool platforms run (the `guard` command,
the HTTP service, diffusers pipelines, catalog scans, checkpoint conversion), a few lines
around one `Guard` call."""
