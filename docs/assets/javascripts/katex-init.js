// Typeset the math that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \] inside
// .arithmatex elements, with the KaTeX vendored in assets/katex (no CDN). A formula KaTeX
// cannot parse is reported with console.error, which the docs browser test turns into a failure.
document$.subscribe(({ body }) => {
  for (const element of body.querySelectorAll(".arithmatex")) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
    });
  }
});
