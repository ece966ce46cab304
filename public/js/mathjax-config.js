// MathJax reads its configuration from window.MathJax before it loads; a file, not an inline script,
// so the page keeps a strict script policy.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]] },
  chtml: { fontURL: "vendor/mathjax/output/chtml/fonts/woff-v2" },
  startup: { typeset: true },
};
