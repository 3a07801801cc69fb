// The sortable, paginated trial table of one search (sorting and paging happen on the server).

import { el, fmt, getJson } from './api.js';

export class TrialTable {
  constructor(searchId, onSelect) {
    this.searchId = searchId;
    this.onSelect = onSelect;
    this.sort = 'number';
    this.order = 'asc';
    this.offset = 0;
    this.limit = 25;
    this.filter = '';
    this.selected = null;
    this.objectives = [];
    this.thead = el('thead');
    this.tbody = el('tbody');
    this.info = el('span', { id: 'page-info', class: 'muted' });
    this.prev = el('button', { id: 'page-prev', onclick: () => this.go(-1) }, '‹ prev');
    this.next = el('button', { id: 'page-next', onclick: () => this.go(1) }, 'next ›');
    this.size = el('select', { id: 'page-size', onchange: () => { this.limit = Number(this.size.value); this.offset = 0; this.refresh(); } },
      [10, 25, 50, 100].map((n) => el('option', { value: n, selected: n === this.limit }, `${n} / page`)));
    this.filterSelect = el('select', { id: 'trial-filter', onchange: () => { this.filter = this.filterSelect.value; this.offset = 0; this.refresh(); } },
      el('option', { value: '' }, 'all trials'),
      el('option', { value: 'feasible' }, 'feasible'),
      el('option', { value: 'infeasible' }, 'infeasible'),
      el('option', { value: 'failed' }, 'failed'));
    this.root = el('div', {},
      el('div', { class: 'filters' }, this.filterSelect, this.size),
      el('div', { class: 'table-wrap' }, el('table', { class: 'grid', id: 'trials-table' }, this.thead, this.tbody)),
      el('div', { class: 'pager' }, this.prev, this.info, this.next));
  }

  go(step) {
    this.offset = Math.max(0, this.offset + step * this.limit);
    this.refresh();
  }

  sortBy(key) {
    if (this.sort === key) this.order = this.order === 'asc' ? 'desc' : 'asc';
    else { this.sort = key; this.order = 'asc'; }
    this.offset = 0;
    this.refresh();
  }

  header(key, text) {
    const arrow = this.sort === key ? (this.order === 'asc' ? ' ▲' : ' ▼') : '';
    return el('th', { class: 'sortable', dataset: { sort: key }, onclick: () => this.sortBy(key) }, text + arrow);
  }

  async refresh() {
    const params = { sort: this.sort, order: this.order, offset: this.offset, limit: this.limit };
    if (this.filter === 'feasible' || this.filter === 'infeasible') {
      params.state = 'complete';
      params.feasible = this.filter === 'feasible';
    } else if (this.filter === 'failed') params.state = 'failed';
    const page = await getJson(`/v1/dashboard/searches/${this.searchId}/trials`, params);
    this.objectives = page.sortable.filter((k) => !['number', 'state', 'feasible'].includes(k));
    this.thead.replaceChildren(el('tr', {},
      this.header('number', '#'),
      this.header('state', 'state'),
      this.header('feasible', 'feasible'),
      this.objectives.map((o) => this.header(o, o)),
      el('th', {}, 'front')));
    const front = new Set(page.front_numbers);
    this.tbody.replaceChildren(...page.items.map((t) => el('tr', {
      class: `clickable${t.number === this.selected ? ' selected' : ''}`,
      dataset: { number: String(t.number) },
      onclick: () => this.onSelect(t.number),
    },
    el('td', { class: 'num' }, t.number),
    el('td', {}, t.state === 'failed' ? el('span', { class: 'badge status-failed', title: t.error || '' }, 'failed') : t.state),
    el('td', {}, t.feasible ? 'yes' : el('span', { class: 'warn' }, 'no')),
    this.objectives.map((o) => el('td', { class: 'num' }, fmt(t.values[o]))),
    el('td', {}, front.has(t.number) ? el('span', { class: 'badge front' }, 'front') : ''))));
    if (!page.items.length) this.tbody.append(el('tr', {}, el('td', { colspan: 4 + this.objectives.length, class: 'muted empty' }, 'No trials yet.')));
    const last = Math.min(page.total, this.offset + page.items.length);
    this.info.textContent = page.total ? `${this.offset + 1}–${last} of ${page.total}` : '0 trials';
    this.prev.disabled = this.offset === 0;
    this.next.disabled = last >= page.total;
  }

  markSelected(number) {
    this.selected = number;
    for (const row of this.tbody.querySelectorAll('tr[data-number]')) {
      row.classList.toggle('selected', Number(row.dataset.number) === number);
    }
  }
}
