// 仪表盘的回答图表 / the dashboard's answers-per-hour chart (uPlot), redrawn after every live refresh.
(function () {
  var plot = null;

  function draw() {
    var data = document.getElementById("answers-data");
    var box = document.getElementById("answers-chart");
    if (!data || !box || typeof uPlot === "undefined") {
      return;
    }
    var series = JSON.parse(data.textContent);
    if (plot) {
      plot.setData(series);
      return;
    }
    plot = new uPlot({
      width: Math.min(box.clientWidth || 800, 1100),
      height: 220,
      series: [
        {},
        { label: "成功 ok", stroke: "#1a7f37", fill: "rgba(26,127,55,0.08)" },
        { label: "失败 failed", stroke: "#cf222e" }
      ],
      axes: [{}, { label: "条/小时" }]
    }, series, box);
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSwap", draw);
})();
