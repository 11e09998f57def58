// The chat page's build: one small bundle under dist/, served by herd at /chat/ (api/routes/web.py).
import { defineConfig } from "vite";

export default defineConfig({
  base: "/chat/",
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true, assetsDir: "assets", sourcemap: false },
});
