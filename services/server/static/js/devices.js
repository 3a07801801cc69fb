// Devices: each latency target with its table size, its LUT coverage of every space, and how well its
// table predicts whole subnets measured end to end (predicted vs measured).

import { el, fmt, getJson } from './api.js';
import { drawAccuracy } from './plots.js';

const pct = (share) => (share === null || share === undefined ? '–' : `${(share * 100).toFixed(1)}%`);

export class DevicesView {
  constructor(capabilities) {
    this.nav = 'devices';
    this.capabilities = capabilities || {};
    this.loaded = false;
    this.devices = el('tbody');
    this.coverage = el('div', { id: 'coverage' }, el('p', { class: 'muted' }, 'Counting blocks…'));
    this.root = el('div', { id: 'devices-view' },
      el('section', { class: 'panel' }, el('h1', {}, 'Devices'),
        el('table', { class: 'grid', id: 'devices-table' },
          el('thead', {}, el('tr', {}, ['device', 'runtime', 'hardware', 'measured by', 'entries'].map((h) => el('th', {}, h)))),
          this.devices)),
      el('section', { class: 'panel' }, el('h2', {}, 'Latency-table coverage per space'),
        el('p', { class: 'muted small' },
          'Blocks of each space (at its default options and at the options of stored searches) that the device\u2019s ' +
          'table has timed. Missing blocks are measured before a search on devices with a local backend; other ' +
          'devices get them from a device farm (GET /v1/devices/{device}/work) or an import.'),
        this.coverage),
      this.capabilities.device_accuracy
        ? el('section', { class: 'panel', id: 'accuracy-panel' }, el('h2', {}, 'Prediction accuracy'),
          el('p', { class: 'muted small' },
            'Held-out whole subnets measured end to end on the device (nas lut validate) against the latency its ' +
            'predictors give them: RMSE, RMSPE, the shares within \u00b15/10/15% (nn-Meter\u2019s measures) and Spearman\u2019s ' +
            '\u03c1, for the predictor searches price with and every other candidate. The ceiling is the same subnets ' +
            'measured a second time, judged as if it were a prediction: no predictor can do better. ' +
            'Orange points were priced partly by the fallback.'),
          this.accuracy = el('div', { id: 'accuracy' }, el('p', { class: 'muted' }, 'Loading…')))
        : el('p', { class: 'muted small', id: 'accuracy-note' },
          'Predicted-vs-measured accuracy plots appear here once the server offers GET /v1/devices/{device}/accuracy.'));
  }

  async refresh() {
    if (this.loaded) return false;
    // Both are list envelopes ({items, total, offset, limit}) whose default page holds every row.
    const [devicePage, coveragePage] = await Promise.all([getJson('/v1/devices'), getJson('/v1/dashboard/devices/coverage')]);
    const devices = devicePage.items;
    const coverage = coveragePage.items;
    this.devices.replaceChildren(...devices.map((d) => el('tr', { dataset: { device: d.name } },
      el('td', {}, el('b', {}, d.name), el('div', { class: 'muted small' }, d.description)),
      el('td', {}, d.runtime), el('td', {}, d.hardware),
      el('td', {}, d.backend ? `this host (${d.backend})` : 'a device farm / import'),
      el('td', { class: 'num' }, fmt(d.entries)))));
    this.renderCoverage(coverage);
    if (this.capabilities.device_accuracy) {
      const reports = await Promise.all(devices.map((d) => getJson(`/v1/devices/${encodeURIComponent(d.name)}/accuracy`, { pairs: 'true' })));
      this.renderAccuracy(reports.filter((r) => r.n > 0));
    }
    this.loaded = true;
    return false;
  }

  renderAccuracy(reports) {
    if (!reports.length) {
      this.accuracy.replaceChildren(el('p', { class: 'muted', id: 'accuracy-empty' },
        'No device has validation subnets yet: run `nas lut validate --device D --space S` on a device with a table.'));
      return;
    }
    const head = el('tr', {}, ['device', 'predictor', 'subnets', 'RMSE (ms)', 'RMSPE', '±5%', '±10%', '±15%', 'ρ',
      'ceiling ±5%', 'ceiling ±10%', 'spaces'].map((h) => el('th', {}, h)));
    const ceiling = (r, key) => (r.ceiling ? pct(r.ceiling[key]) : '–');
    const rows = reports.map((r) => el('tr', { dataset: { device: r.device, n: String(r.n), predictor: r.selected || '' } },
      el('td', {}, el('b', {}, r.device)), el('td', {}, r.selected || '–'), el('td', { class: 'num' }, fmt(r.n)),
      el('td', { class: 'num' }, fmt(r.rmse_ms)), el('td', { class: 'num' }, pct(r.rmspe)),
      el('td', { class: 'num' }, pct(r.within_5)), el('td', { class: 'num' }, pct(r.within_10)),
      el('td', { class: 'num' }, pct(r.within_15)), el('td', { class: 'num' }, r.spearman == null ? '–' : r.spearman.toFixed(3)),
      el('td', { class: 'num ceiling', dataset: { within5: String(r.ceiling ? r.ceiling.within_5 : '') } }, ceiling(r, 'within_5')),
      el('td', { class: 'num ceiling' }, ceiling(r, 'within_10')), el('td', {}, r.spaces.join(', '))));
    const plots = reports.map((r) => {
      const div = el('div', { class: 'plot accuracy-plot', dataset: { device: r.device, points: String(r.pairs.length) } });
      const candidates = el('table', { class: 'grid small predictors', dataset: { device: r.device } },
        el('thead', {}, el('tr', {}, ['predictor', 'subnets', 'RMSPE', 'mean error', '±5%', '±10%', 'ρ'].map((h) => el('th', {}, h)))),
        el('tbody', {}, [...r.predictors, ...(r.ceiling ? [{ ...r.ceiling, name: 'ceiling (measured twice)' }] : [])].map((p) =>
          el('tr', { dataset: { predictor: p.name } }, el('td', {}, p.name), el('td', { class: 'num' }, fmt(p.n)),
            el('td', { class: 'num' }, pct(p.rmspe)), el('td', { class: 'num' }, pct(p.mean_error)),
            el('td', { class: 'num' }, pct(p.within_5)), el('td', { class: 'num' }, pct(p.within_10)),
            el('td', { class: 'num' }, p.spearman == null ? '–' : p.spearman.toFixed(3))))));
      return { div, r, wrap: el('div', { class: 'panel' }, el('h3', {}, r.device), candidates, div) };
    });
    this.accuracy.replaceChildren(el('table', { class: 'grid', id: 'accuracy-table' }, el('thead', {}, head), el('tbody', {}, rows)),
      ...plots.map((p) => p.wrap));
    if (window.Plotly) for (const p of plots) drawAccuracy(p.div, p.r.pairs);
  }

  renderCoverage(rows) {
    const groups = new Map();
    for (const row of rows) {
      const key = `${row.space} ${JSON.stringify(row.options)}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(row);
    }
    const devices = [...new Set(rows.map((r) => r.device))];
    const head = el('tr', {}, el('th', {}, 'space (options)'), el('th', {}, 'blocks'), devices.map((d) => el('th', {}, d)));
    const body = [...groups.values()].map((group) => {
      const first = group[0];
      const options = Object.keys(first.options).length ? JSON.stringify(first.options) : 'defaults';
      return el('tr', { dataset: { space: first.space } },
        el('td', {}, el('b', {}, first.space), el('div', { class: 'muted small' }, options)),
        el('td', { class: 'num' }, first.error ? el('span', { class: 'warn', title: first.error }, 'n/a') : fmt(first.blocks)),
        devices.map((d) => {
          const row = group.find((r) => r.device === d);
          if (!row || row.error) return el('td', {}, '–');
          return el('td', { class: 'coverage-cell', dataset: { device: d, covered: String(row.covered), blocks: String(row.blocks) } },
            el('div', { class: 'progress' },
              el('div', { class: 'progress-fill', style: `width:${(row.share * 100).toFixed(1)}%` }),
              el('span', { class: 'progress-text' }, `${fmt(row.covered)} / ${fmt(row.blocks)}`)));
        }));
    });
    this.coverage.replaceChildren(el('table', { class: 'grid', id: 'coverage-table' }, el('thead', {}, head), el('tbody', {}, body)));
  }
}
