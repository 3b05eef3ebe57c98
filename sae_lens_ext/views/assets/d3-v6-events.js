// SAEDashboard's scripts are written for d3 v6, whose event listeners are called as (event, datum).
// The d3 shipped here is v5.16 (listeners get (datum, index, nodes) and the event is d3.event), so
// adapt `selection.on` to the v6 calling convention. Written for reason-plugins; loaded after d3.
(function () {
  if (typeof d3 === "undefined" || !d3.version || +d3.version.split(".")[0] >= 6) return;
  var on = d3.selection.prototype.on;
  d3.selection.prototype.on = function (typename, listener, options) {
    if (typeof listener !== "function") return on.apply(this, arguments);
    return on.call(this, typename, function (d) { return listener.call(this, d3.event, d); }, options);
  };
})();
