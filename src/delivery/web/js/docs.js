// Starts Swagger UI on /docs with FastAPI's settings for it: from a file, as the pages' policy allows no inline
// script. The bundle (loaded before this module) defines SwaggerUIBundle; the document's address is data-url.

const root = document.getElementById("swagger-ui");

window.ui = window.SwaggerUIBundle({
  url: root.dataset.url,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIBundle.SwaggerUIStandalonePreset],
});
