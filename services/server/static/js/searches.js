// The searches list: status and text filters, progress bars, best values, one row per search.

import { el, fmt, getJson, progressBar, shortId, statusBadge, warningsBadge, withUnit } from './api.js';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const PAGE = 50;

export class SearchesView {
  constructor() {
    this.nav = 'searches';
    this.offset = 0;
    this.status = new URLSearchParams(window.location.hash.split('?')[1] || '').get('status') || '';
    this.query = '';
    this.statusSelect = el(
      'select',
      { id: 'filter-status', onchange: () => this.filterChanged() },
      el('option', { value: '' }, 'all statuses'),
      STATUSES.map((s) => el('option', { value: s, selected: s === this.status }, s)),
    );
    this.queryInput = el('input', {
      id: 'filter-text',
      type: 'search',
      placeholder: 'name or id',
      oninput: () => {
        window.clearTimeout(this.debounce);
        this.debounce = window.setTimeout(() => this.filterChanged(), 250);
      },
    });
    this.tbody = el('tbody');
    this.summary = el('span', { class: 'muted', id: 'searches-summary' });
    this.prev = el('button', { onclick: () => this.page(-1) }, '‹ newer');
    this.next = el('button', { onclick: () => this.page(1) }, 'older ›');
    this.root = el(
      'section',
      { class: 'panel', id: 'searches-view' },
      el('div', { class: 'panel-head' },
        el('h1', {}, 'Searches'),
        el('div', { class: 'filters' }, this.statusSelect, this.queryInput),
      ),
      el('table', { class: 'grid', id: 'searches-table' },
        el('thead', {}, el('tr', {},
          ['Search', 'Status', 'Progress', 'Front', 'Hypervolume', 'Best values', 'Space', 'Strategy', 'Created']
            .map((h) => el('th', {}, h)))),
        this.tbody,
      ),
      el('div', { class: 'pager' }, this.prev, this.summary, this.next),
    );
  }

  filterChanged() {
    this.status = this.statusSelect.value;
    this.query = this.queryInput.value;
    this.offset = 0;
    this.refresh();
  }

  page(step) {
    this.offset = Math.max(0, this.offset + step * PAGE);
    this.refresh();
  }

  async refresh() {
    const page = await getJson('/v1/dashboard/searches', {
      status: this.status || undefined,
      q: this.query,
      offset: this.offset,
      limit: PAGE,
    });
    this.tbody.replaceChildren(...page.items.map((s) => this.row(s)));
    if (!page.items.length) {
      const text = page.total ? 'No searches on this page.' : 'No searches match. Submit one with `nas search submit SPEC` or POST /v1/searches.';
      this.tbody.append(el('tr', {}, el('td', { colspan: 9, class: 'muted empty' }, text)));
    }
    const last = Math.min(page.total, this.offset + page.items.length);
    this.summary.textContent = page.total ? `${this.offset + 1}–${last} of ${page.total}` : '';
    this.prev.disabled = this.offset === 0;
    this.next.disabled = last >= page.total;
    return page.items.some((s) => s.status === 'running' || s.status === 'queued');
  }

  row(search) {
    const open = () => { window.location.hash = `#/search/${search.id}`; };
    const best = search.objectives.map((o) =>
      el('div', { class: 'best' },
        el('span', { class: 'obj-name' }, `${o.direction === 'minimize' ? '↓' : '↑'} ${o.name}`),
        ' ', el('b', {}, withUnit(o.name, search.best[o.name]))));
    return el(
      'tr',
      { class: 'clickable', dataset: { searchId: search.id, status: search.status }, onclick: open },
      el('td', {},
        el('a', { href: `#/search/${search.id}`, class: 'search-name' }, search.name || '(unnamed)'),
        el('div', { class: 'muted mono' }, shortId(search.id))),
      el('td', {}, statusBadge(search.status), warningsBadge(search.warnings),
        el('div', { class: 'muted small' }, search.status_message)),
      el('td', { class: 'progress-cell' }, progressBar(search.trials_done, search.budget_trials, search.status)),
      el('td', { class: 'num' }, fmt(search.front_size)),
      el('td', { class: 'num' }, fmt(search.hypervolume)),
      el('td', {}, best),
      el('td', {}, search.space),
      el('td', {}, search.strategy),
      el('td', { class: 'small' }, new Date(search.created_at).toLocaleString()),
    );
  }
}
