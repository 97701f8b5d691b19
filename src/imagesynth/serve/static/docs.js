// Starts Swagger UI on the server's own OpenAPI document (a file, not inline: the CSP allows
// only same-origin scripts).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
