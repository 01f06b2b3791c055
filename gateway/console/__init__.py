"""The operator console's page: HTML rendered on the server (everything escaped), an inline SVG
chart, and the small script and style sheet the gateway serves beside it (no build step)."""
