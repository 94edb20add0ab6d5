// 额度与黑名单 / the limits page: a refused change (400) still shows its reason in place of the tables.
document.addEventListener("htmx:beforeSwap", function (event) {
  if (event.detail.xhr.status === 400 && event.detail.target && event.detail.target.id === "limits-body") {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
