// Behaviour every page shares, as a static file: the Content-Security-Policy (script-src 'self') refuses
// inline handlers such as onchange="..." or onsubmit="...", so pages mark elements with data attributes.
//   <select data-autosubmit>          submits its form when the choice changes (the tenant switcher)
//   <form data-confirm="Question?">   asks before submitting; Cancel keeps the page as it is
document.addEventListener("change", (event) => {
  const field = event.target;
  if (field instanceof HTMLElement && field.matches("[data-autosubmit]") && field.form) field.form.requestSubmit();
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
