// Starts the vendored Swagger UI on /openapi.json. A file of its own, not an inline
// script: the page's Content-Security-Policy runs only this origin's files.
window.ui = window.SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  // The schema is this server's own; Swagger's online validator would send it elsewhere.
  validatorUrl: null,
});
