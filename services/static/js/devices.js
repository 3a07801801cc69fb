// Devices: each latency target with its table size, and its LUT coverage of every space.

import { el, fmt, getJson } from './api.js';

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
        ? null
        : el('p', { class: 'muted small', id: 'accuracy-note' },
          'Predicted-vs-measured accuracy plots appear here once the server offers GET /v1/devices/{device}/accuracy.'));
  }

  async refresh() {
    if (this.loaded) return false;
    const [devices, coverage] = await Promise.all([getJson('/v1/devices'), getJson('/v1/dashboard/devices/coverage')]);
    this.devices.replaceChildren(...devices.map((d) => el('tr', { dataset: { device: d.name } },
      el('td', {}, el('b', {}, d.name), el('div', { class: 'muted small' }, d.description)),
      el('td', {}, d.runtime), el('td', {}, d.hardware),
      el('td', {}, d.backend ? `this host (${d.backend})` : 'a device farm / import'),
      el('td', { class: 'num' }, fmt(d.entries)))));
    this.renderCoverage(coverage);
    this.loaded = true;
    return false;
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
