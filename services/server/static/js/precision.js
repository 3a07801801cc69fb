// A bit-width config (hundreds of per-layer widths) drawn readably: the totals, a histogram of the
// widths, one row per stage (layers, mean bits, its widths as a stacked bar) and, collapsed, the
// full per-layer list grouped by stage.

import { el, fmt } from './api.js';

// One colour per width, narrow to wide.
const WIDTH_COLOURS = { 1: '#e03131', 2: '#f76707', 3: '#f59f00', 4: '#37b24d', 8: '#1c7ed6', 16: '#868e96' };

function stackedBar(histogram, total) {
  return el('div', { class: 'width-bar', title: Object.entries(histogram).map(([b, n]) => `${b} bits: ${n}`).join(', ') },
    Object.entries(histogram).map(([bits, n]) => el('div', {
      class: 'width-part',
      dataset: { bits },
      style: `width:${((n / total) * 100).toFixed(1)}%;background:${WIDTH_COLOURS[bits] || '#adb5bd'}`,
    })));
}

function legend(histogram) {
  return el('div', { class: 'width-legend small' }, histogram.map((h) => el('span', { class: 'width-key' },
    el('span', { class: 'swatch', style: `background:${WIDTH_COLOURS[h.bits] || '#adb5bd'}` }),
    `${h.bits} bits: ${h.layers} layers, ${fmt(h.weights)} weights`)));
}

export function precisionSummaryText(view) {
  const widths = view.histogram.map((h) => `${h.bits} bits: ${h.layers}`).join(', ');
  return `${view.layers_total} layers, ${fmt(view.size_mb)} MB, ${fmt(view.mean_bits)} bits/weight\n` +
    `layers per width: ${widths}\n` +
    view.stages.map((s) => `${s.stage}: ${s.layers} layers, ${fmt(s.mean_bits)} bits`).join('\n');
}

export function drawPrecision(container, view) {
  const rows = view.stages.map((stage) => el('tr', { dataset: { stage: stage.stage } },
    el('th', {}, stage.stage),
    el('td', { class: 'num' }, String(stage.layers)),
    el('td', { class: 'num' }, fmt(stage.weights)),
    el('td', { class: 'num' }, fmt(stage.mean_bits)),
    el('td', { class: 'bar-cell' }, stackedBar(stage.histogram, stage.layers))));
  const byStage = new Map();
  for (const layer of view.layers) {
    if (!byStage.has(layer.stage)) byStage.set(layer.stage, []);
    byStage.get(layer.stage).push(layer);
  }
  const layerList = el('details', { id: 'precision-layers' },
    el('summary', {}, `every layer (${view.layers.length})`),
    [...byStage.entries()].map(([stage, layers]) => el('div', { class: 'layer-group' },
      el('div', { class: 'stage-title' }, stage),
      el('table', { class: 'kv layers' }, layers.map((layer) => el('tr', {},
        el('th', {}, layer.name + (layer.fixed ? ' (fixed)' : '')),
        el('td', { class: 'num' }, `${layer.bits} bits`),
        el('td', { class: 'num muted' }, fmt(layer.weights))))))));
  container.replaceChildren(el('div', { class: 'precision', id: 'precision-view' },
    el('div', { class: 'precision-head' },
      el('strong', {}, `${view.layers_total} quantized layers`),
      ` · ${fmt(view.size_mb)} MB · ${fmt(view.mean_bits)} bits per weight`),
    stackedBar(Object.fromEntries(view.histogram.map((h) => [h.bits, h.layers])), view.layers_total),
    legend(view.histogram),
    el('table', { class: 'precision-stages', id: 'precision-stages' },
      el('tr', {}, ['stage', 'layers', 'weights', 'mean bits', 'widths'].map((h) => el('th', {}, h))),
      rows),
    layerList));
}
