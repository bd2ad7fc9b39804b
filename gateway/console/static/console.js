// A finance action must not be sent twice by an impatient double click: disable the button once its form is
// on its way. Everything else in the console works without script.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.method.toLowerCase() !== "post") return;
  for (const button of form.querySelectorAll("button[type=submit]")) {
    setTimeout(() => { button.disabled = true; }, 0);
  }
});
