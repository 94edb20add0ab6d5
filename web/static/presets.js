// Presets page: clicking a problem ("第 3 行：…") selects that line in the editor.
document.addEventListener("click", function (event) {
  var item = event.target.closest && event.target.closest(".problems li[data-line]");
  var editor = document.getElementById("preset-text");
  var line = item ? parseInt(item.getAttribute("data-line"), 10) : 0;
  if (!editor || !line) {
    return;
  }
  var lines = editor.value.split("\n");
  var start = 0;
  for (var i = 0; i < line - 1 && i < lines.length; i++) {
    start += lines[i].length + 1;
  }
  var end = start + (lines[line - 1] || "").length;
  editor.focus();
  editor.setSelectionRange(start, end);
  var height = editor.scrollHeight / Math.max(lines.length, 1);
  editor.scrollTop = Math.max(0, (line - 3) * height);
});
