"""The OpenAPI 3.1 description of the REST API, built from the routes' own metadata."""
