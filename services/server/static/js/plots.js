// The Pareto scatter (WebGL: scattergl in 2-D, scatter3d in 3-D) and the hypervolume curve.

import { objectiveUnit } from './api.js';

const COLORS = { front: '#d62728', feasible: '#4c78a8', infeasible: '#9d9d9d', selected: '#111111' };
const CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'] };

function label(objective, short) {
  const { unit } = objectiveUnit(objective.name);
  const name = unit ? `${objective.name} [${unit}]` : objective.name;
  if (short) return `${name} ${objective.direction === 'minimize' ? '↓' : '↑'}`;
  return `${name} (${objective.direction === 'minimize' ? 'lower' : 'higher'} is better)`;
}

function hoverTemplate(objectives, series) {
  const axes = ['x', 'y', 'z'].slice(0, objectives.length);
  const lines = axes.map((a, i) => `${objectives[i].name}: %{${a}:.4~g} ${objectiveUnit(objectives[i].name).unit}`);
  return `<b>trial %{customdata}</b><br>${lines.join('<br>')}<extra>${series}</extra>`;
}

// A series with its values in the objectives' display units.
function scaled(series, objectives) {
  const axes = ['x', 'y', 'z'].slice(0, objectives.length);
  const out = { ...series };
  axes.forEach((a, i) => {
    const { divisor } = objectiveUnit(objectives[i].name);
    if (series[a]) out[a] = series[a].map((v) => (v === null || v === undefined ? v : v / divisor));
  });
  return out;
}

// The search's constraints (`params <= 3500000`) as {name, op, bound}; unreadable ones are left out.
export function parseConstraints(constraints) {
  const found = [];
  for (const text of constraints || []) {
    const match = /^\s*([^<>=\s]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$/.exec(String(text));
    if (match && Number.isFinite(Number(match[3]))) found.push({ name: match[1], op: match[2], bound: Number(match[3]) });
  }
  return found;
}

// A 2-D front drawn as its attainment staircase: points sorted by x, a step toward worse x first.
function frontLine(series, objectives) {
  const order = series.x.map((_, i) => i).sort((a, b) => series.x[a] - series.x[b] || series.y[a] - series.y[b]);
  const pick = (arr) => order.map((i) => arr[i]);
  return {
    x: pick(series.x),
    y: pick(series.y),
    customdata: pick(series.numbers),
    shape: objectives[0].direction === 'minimize' ? 'hv' : 'vh',
  };
}

// `constraints`: the search's, drawn in 2-D as dashed lines at their bounds (in 3-D the counts line
// names them: Plotly draws no lines across a 3-D scene).
export function drawPareto(div, raw, selected, logAxes, constraints = []) {
  const three = raw.objectives.length === 3;
  const data = {
    ...raw,
    front: scaled(raw.front, raw.objectives),
    feasible: scaled(raw.feasible, raw.objectives),
    infeasible: scaled(raw.infeasible, raw.objectives),
  };
  if (selected) {
    const point = scaled({ x: [selected.x], y: [selected.y], z: [selected.z] }, raw.objectives);
    selected = { number: selected.number, x: point.x[0], y: point.y[0], z: point.z[0] };
  }
  const type = three ? 'scatter3d' : 'scattergl';
  const trace = (name, series, marker, extra = {}) => {
    const t = {
      type,
      mode: 'markers',
      name,
      x: series.x,
      y: series.y,
      customdata: series.numbers,
      marker,
      hovertemplate: hoverTemplate(data.objectives, name),
      ...extra,
    };
    if (three) t.z = series.z;
    return t;
  };
  const size = three ? 4 : 6;
  const traces = [
    trace(`infeasible (${data.counts.infeasible})`, data.infeasible, { color: COLORS.infeasible, size, symbol: three ? 'cross' : 'x' }),
    trace(`feasible (${data.counts.feasible - data.counts.front})`, data.feasible, { color: COLORS.feasible, size, opacity: 0.6 }),
  ];
  if (three) {
    traces.push(trace('Pareto front', data.front, { color: COLORS.front, size: 7, line: { color: '#fff', width: 0.5 } }));
  } else {
    const line = frontLine(data.front, data.objectives);
    traces.push({
      ...trace('Pareto front', { ...data.front, x: line.x, y: line.y, numbers: line.customdata }, { color: COLORS.front, size: 10, line: { color: '#fff', width: 1 } }),
      mode: 'lines+markers',
      line: { color: COLORS.front, width: 1.5, shape: line.shape },
    });
  }
  if (selected) {
    const point = { x: [selected.x], y: [selected.y], z: [selected.z], numbers: [selected.number] };
    traces.push(trace(`selected: trial ${selected.number}`, point,
      { color: 'rgba(0,0,0,0)', size: three ? 8 : 18, line: { color: COLORS.selected, width: 3 }, symbol: 'circle' },
      { hoverinfo: 'skip', hovertemplate: null }));
  }
  const axis = (objective) => ({
    title: { text: label(objective, three) },
    type: logAxes ? 'log' : 'linear',
    zeroline: false,
  });
  const layout = {
    uirevision: data.objectives.map((o) => o.name).join('|') + (logAxes ? '|log' : ''),
    margin: { l: 70, r: 10, t: 10, b: 55 },
    legend: { orientation: 'h', y: 1.08, x: 0 },
    hovermode: 'closest',
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: '#fbfbfd',
  };
  if (three) {
    layout.scene = {
      xaxis: axis(data.objectives[0]),
      yaxis: axis(data.objectives[1]),
      zaxis: axis(data.objectives[2]),
      camera: { eye: { x: 1.6, y: 1.6, z: 1.0 } },
    };
    layout.margin = { l: 0, r: 0, t: 10, b: 0 };
  } else {
    layout.xaxis = axis(data.objectives[0]);
    layout.yaxis = axis(data.objectives[1]);
    const bounds = boundLines(constraints, data.objectives);
    layout.shapes = bounds.shapes;
    layout.annotations = bounds.annotations;
  }
  return window.Plotly.react(div, traces, layout, CONFIG);
}

// Dashed lines at the bounds of the constraints on the plotted x and y objectives, each labelled.
function boundLines(constraints, objectives) {
  const shapes = [];
  const annotations = [];
  for (const c of constraints) {
    const axis = objectives.findIndex((o) => o.name === c.name);
    if (axis < 0 || axis > 1) continue;
    const { unit, divisor } = objectiveUnit(c.name);
    const value = c.bound / divisor;
    const text = `${c.name} ${c.op} ${Number(value.toPrecision(4))}${unit ? ` ${unit}` : ''}`;
    const line = { type: 'line', line: { color: '#e8590c', width: 1.5, dash: 'dash' }, name: `bound: ${text}` };
    if (axis === 0) {
      shapes.push({ ...line, xref: 'x', yref: 'paper', x0: value, x1: value, y0: 0, y1: 1 });
      annotations.push({ xref: 'x', yref: 'paper', x: value, y: 1, text, showarrow: false, xanchor: 'left', yanchor: 'top', font: { color: '#e8590c', size: 11 } });
    } else {
      shapes.push({ ...line, xref: 'paper', yref: 'y', x0: 0, x1: 1, y0: value, y1: value });
      annotations.push({ xref: 'paper', yref: 'y', x: 1, y: value, text, showarrow: false, xanchor: 'right', yanchor: 'bottom', font: { color: '#e8590c', size: 11 } });
    }
  }
  return { shapes, annotations };
}

export function drawHypervolume(div, curve) {
  const traces = [{
    type: 'scatter',
    mode: 'lines',
    name: 'hypervolume',
    x: curve.evaluations,
    y: curve.hypervolume,
    line: { color: '#2ca02c', width: 2, shape: 'hv' },
    hovertemplate: 'after %{x} evaluations: %{y:.4f}<extra></extra>',
  }];
  const layout = {
    uirevision: 'hv',
    margin: { l: 55, r: 10, t: 10, b: 45 },
    xaxis: { title: { text: 'evaluations' }, rangemode: 'tozero' },
    yaxis: { title: { text: `hypervolume (ref ${curve.reference})` }, rangemode: 'tozero' },
    showlegend: false,
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: '#fbfbfd',
  };
  return window.Plotly.react(div, traces, layout, { ...CONFIG, displayModeBar: false });
}

// Predicted vs measured latency of a device's held-out subnets, with the y = x line and a +-10% band.
export function drawAccuracy(div, points) {
  const predicted = points.map((p) => p.predicted_ms);
  const measured = points.map((p) => p.measured_ms);
  const lo = Math.min(...predicted, ...measured) * 0.9;
  const hi = Math.max(...predicted, ...measured) * 1.1;
  const line = (name, factor, dash) => ({
    type: 'scatter', mode: 'lines', name, x: [lo, hi], y: [lo * factor, hi * factor],
    line: { color: '#9d9d9d', width: 1, dash }, hoverinfo: 'skip',
  });
  const traces = [
    line('measured = predicted', 1, 'solid'),
    line('+10%', 1.1, 'dot'),
    line('-10%', 0.9, 'dot'),
    {
      type: 'scattergl',
      mode: 'markers',
      name: 'held-out subnets',
      x: predicted,
      y: measured,
      customdata: points.map((p) => `${p.space} ${p.config_id.slice(0, 10)}${p.estimated ? ' (estimated)' : ''}`),
      marker: { color: points.map((p) => (p.estimated ? '#ff7f0e' : '#4c78a8')), size: 7, opacity: 0.85 },
      hovertemplate: '%{customdata}<br>predicted %{x:.3f} ms<br>measured %{y:.3f} ms<extra></extra>',
    },
  ];
  const layout = {
    margin: { l: 60, r: 10, t: 10, b: 45 },
    xaxis: { title: { text: 'predicted (ms)' }, range: [lo, hi] },
    yaxis: { title: { text: 'measured end to end (ms)' }, range: [lo, hi] },
    showlegend: false,
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: '#fbfbfd',
  };
  return window.Plotly.react(div, traces, layout, { ...CONFIG, displayModeBar: false });
}
