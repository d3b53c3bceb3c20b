// The catalog change form in the admin: show the fields of the selected provider or automator type, add rows
// (kept out of the page so the Content-Security-Policy can refuse inline script).
document.addEventListener("DOMContentLoaded", function () {
  // Provider type: show only the fieldset of the selected type.
  var providerType = document.querySelector("select[data-loom-provider-type]");
  if (providerType) {
    var syncProvider = function () {
      document.querySelectorAll("fieldset.loom-provider-type").forEach(function (fieldset) {
        fieldset.hidden = !fieldset.classList.contains("loom-type-" + providerType.value);
      });
    };
    providerType.addEventListener("change", syncProvider);
    syncProvider();
  }
  // Service actions: show only the fields of the selected automator type.
  document.querySelectorAll("[data-loom-action]").forEach(function (row) {
    var select = row.querySelector("select[data-loom-automator]");
    var syncAction = function () {
      row.querySelectorAll("[data-automator]").forEach(function (group) {
        group.hidden = group.getAttribute("data-automator") !== select.value;
      });
    };
    select.addEventListener("change", syncAction);
    syncAction();
  });
  // Row tables: append a copy of the empty form with the next index.
  document.querySelectorAll("[data-loom-add-row]").forEach(function (button) {
    var prefix = button.getAttribute("data-loom-add-row");
    button.addEventListener("click", function () {
      var total = document.getElementById("id_" + prefix + "-TOTAL_FORMS");
      var template = document.querySelector('template[data-loom-empty-row="' + prefix + '"]');
      var body = document.querySelector('table[data-loom-rows="' + prefix + '"] tbody');
      var index = parseInt(total.value, 10);
      body.insertAdjacentHTML("beforeend", template.innerHTML.replace(/__prefix__/g, String(index)));
      total.value = String(index + 1);
    });
  });
});
