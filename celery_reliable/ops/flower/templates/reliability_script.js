  // Confirmations before a form that changes rows is sent, selection checkboxes, the job's reload.
  // No inline handlers: the page's CSP forbids them.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });
  function selected(formId) {
    return document.querySelectorAll('input.row-select[form="' + formId + '"]:checked');
  }
  document.querySelectorAll('form[id^="bulk-"]').forEach(function (form) {
    // form.id would be the ticked boxes (named "id" and owned by the form), not the form's own id
    var formId = form.getAttribute("id");
    form.addEventListener("submit", function (event) {
      var button = event.submitter;
      var n = selected(formId).length;
      if (!button || !button.dataset.confirm) { return; }
      if (n === 0) {
        event.preventDefault();
        window.alert("Select one or more rows first (the boxes on the left).");
        return;
      }
      var noun = n === 1 ? button.dataset.one : button.dataset.many;
      if (!window.confirm(button.dataset.confirm.replace("{n}", n).replace("{noun}", noun))) { event.preventDefault(); }
    });
  });
  document.querySelectorAll("input.select-all").forEach(function (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('input.row-select[form="' + all.dataset.form + '"]').forEach(function (box) {
        box.checked = all.checked;
      });
    });
  });
  document.querySelectorAll("input.row-select").forEach(function (box) {
    box.addEventListener("change", function () {
      var all = document.querySelector('input.select-all[data-form="' + box.getAttribute("form") + '"]');
      var boxes = document.querySelectorAll('input.row-select[form="' + box.getAttribute("form") + '"]');
      if (all) { all.checked = selected(box.getAttribute("form")).length === boxes.length; }
    });
  });
  var job = document.getElementById("reliable-job");
  if (job && job.dataset.running === "1") { window.setTimeout(function () { window.location.reload(); }, 2000); }
