// One search: progress, the Pareto plot (2 or 3 objectives), the hypervolume curve, the selected
// trial with its config, subnet drawing and exports, and the trial table. Live while it runs.

import {
  ApiError, apiKey, authHeaders, el, fmt, getJson, objectiveUnit, progressBar, searchObjectives, shortId, showError, showNotice,
  statusBadge, tableText, warningsBadge, withUnit,
} from './api.js';
import { drawHypervolume, drawPareto, parseConstraints } from './plots.js';
import { drawPrecision, precisionSummaryText } from './precision.js';
import { drawStructure } from './structure.js';
import { TrialTable } from './trials.js';

export class SearchView {
  constructor(searchId, capabilities) {
    this.nav = 'searches';
    this.searchId = searchId;
    this.capabilities = capabilities || { export_formats: ['json'] };
    this.search = null;
    this.seen = null;
    this.picked = [];
    this.selected = null;
    this.details = new Map();
    this.plotData = null;
    this.header = el('div', { class: 'panel', id: 'search-header' }, el('p', { class: 'muted' }, 'Loading search…'));
    this.axisSelects = ['x', 'y', 'z'].map((axis) => el('select', { id: `axis-${axis}`, onchange: () => this.axesChanged() }));
    this.logBox = el('input', { type: 'checkbox', id: 'log-axes', onchange: () => this.drawPlot() });
    this.counts = el('div', { id: 'plot-counts', class: 'muted small' });
    this.plotDiv = el('div', { id: 'pareto-plot', class: 'plot' });
    this.hoverCard = el('div', { id: 'hover-card', class: 'hover-card', hidden: true });
    this.hvDiv = el('div', { id: 'hv-plot', class: 'plot small-plot' });
    this.hvNote = el('div', { class: 'muted small', id: 'hv-note' });
    this.detail = el('div', { id: 'trial-detail' }, el('p', { class: 'muted' }, 'Click a point or a table row to see that trial.'));
    this.structure = el('div', { id: 'structure' }, el('p', { class: 'muted' }, 'The selected subnet is drawn here, stage by stage.'));
    this.table = new TrialTable(searchId, (n) => this.select(n));
    // The step log of a stepwise strategy (evolving, slimming): shown once the search has one.
    this.steps = el('div', { id: 'step-log' });
    this.stepsPanel = el('section', { class: 'panel', id: 'steps-panel', hidden: true },
      el('h2', {}, 'Steps'), this.steps);
    this.root = el('div', { id: 'search-view' },
      el('div', { class: 'crumbs' }, el('a', { href: '#/' }, '← all searches')),
      this.header,
      el('div', { class: 'two-col' },
        el('section', { class: 'panel plot-panel' },
          el('div', { class: 'panel-head' }, el('h2', {}, 'Pareto front'),
            el('div', { class: 'filters' },
              el('label', {}, 'x ', this.axisSelects[0]),
              el('label', {}, 'y ', this.axisSelects[1]),
              el('label', {}, 'z ', this.axisSelects[2]),
              el('label', { title: 'logarithmic axes' }, this.logBox, ' log'))),
          this.counts, el('div', { class: 'plot-wrap' }, this.plotDiv, this.hoverCard)),
        el('section', { class: 'panel detail-panel' }, el('h2', {}, 'Selected trial'), this.detail)),
      el('section', { class: 'panel' }, el('h2', {}, 'Subnet structure'), this.structure),
      el('div', { class: 'two-col reverse' },
        el('section', { class: 'panel' }, el('h2', {}, 'Hypervolume over evaluations'), this.hvDiv, this.hvNote),
        el('section', { class: 'panel' }, el('h2', {}, 'Trials'), this.table.root)),
      this.stepsPanel);
  }

  destroy() {
    if (window.Plotly) for (const div of [this.plotDiv, this.hvDiv]) window.Plotly.purge(div);
  }

  async refresh() {
    const search = await getJson(`/v1/searches/${this.searchId}`);
    const first = this.search === null;
    this.search = search;
    this.renderHeader();
    if (first) this.setupAxes();
    const stamp = `${search.status}|${search.trials_done}|${search.front_size}`;
    if (stamp !== this.seen) {
      this.seen = stamp;
      await Promise.all([this.loadPlot(), this.loadHypervolume(), this.table.refresh(), this.loadSteps()]);
    }
    return search.status === 'running' || search.status === 'queued';
  }

  renderHeader() {
    const s = this.search;
    const spec = s.spec;
    this.header.replaceChildren(
      el('div', { class: 'panel-head' },
        el('h1', {}, s.name || '(unnamed search)', ' ', el('span', { class: 'muted mono small' }, shortId(s.id))),
        statusBadge(s.status), warningsBadge(s.warnings)),
      el('div', { class: 'header-grid' },
        el('div', { id: 'search-progress' }, this.progress(),
          // While the table is measured the status message says the same as the phase line.
          ...((s.progress || {}).phase === 'measuring latency table' ? [] : [el('div', { class: 'muted small', id: 'status-message' }, s.status_message)]),
          ...(tableText(s.progress) ? [el('div', { class: 'small', id: 'table-phase' }, tableText(s.progress))] : [])),
        el('dl', { class: 'facts' },
          el('dt', {}, 'space'), el('dd', {}, spec.space, ' ', el('span', { class: 'muted small' }, JSON.stringify(spec.space_options || {}))),
          el('dt', {}, 'strategy'), el('dd', {}, spec.strategy),
          el('dt', {}, 'owner'), el('dd', {}, s.owner || '–'),
          el('dt', {}, 'objectives'), el('dd', {}, (spec.objectives || []).join(', ')),
          el('dt', {}, 'constraints'), el('dd', {}, (spec.constraints || []).join(', ') || 'none'),
          el('dt', {}, 'front'), el('dd', { id: 'front-size' }, fmt(s.front_size)),
          el('dt', {}, 'hypervolume'), el('dd', {}, fmt(s.hypervolume)),
          el('dt', {}, 'failed'), el('dd', {}, fmt(s.trials_failed)),
          el('dt', {}, 'elapsed'), el('dd', {}, `${fmt(s.elapsed_s)} s`))),
      ...(s.error ? [el('pre', { class: 'error-text' }, s.error)] : []),
      ...((s.warnings || []).length
        ? [el('ul', { class: 'warning-list', id: 'search-warnings' }, ...s.warnings.map((w) => el('li', {}, w)))]
        : []));
  }

  // Until the first trial a search may measure its latency table: the bar counts table entries then.
  progress() {
    const s = this.search;
    const progress = s.progress || {};
    const table = progress.latency_table;
    if (progress.phase === 'measuring latency table' && table) {
      const bar = progressBar(table.done, table.total, s.status);
      bar.title = `${table.done} of ${table.total} latency-table entries`;
      bar.classList.add('table-phase');
      return bar;
    }
    return progressBar(s.trials_done, s.budget_trials, s.status);
  }

  setupAxes() {
    const names = searchObjectives(this.search.spec);
    const own = (this.search.spec.objectives || []).map((n) => String(n).trim());
    // A search of 2 or 3 objectives opens on all of them, so the plot's front is the search's own front
    // (the header's count); other objectives (those constraints bound) can be picked after.
    this.picked = own.length === 2 || own.length === 3 ? own : names.slice(0, 2);
    this.axisSelects.forEach((select, i) => {
      const options = names.map((n) => el('option', { value: n, selected: n === this.picked[i] }, n));
      if (i === 2) options.unshift(el('option', { value: '', selected: this.picked.length < 3 }, '(none: 2-D)'));
      select.replaceChildren(...options);
      select.disabled = names.length < 2 || (i === 2 && names.length < 3);
    });
    if (names.length < 2) this.counts.textContent = 'This search has one objective: nothing to plot against it.';
  }

  axesChanged() {
    const picked = this.axisSelects.map((s) => s.value).filter(Boolean);
    if (new Set(picked).size !== picked.length) {
      this.counts.textContent = 'Pick different objectives for x, y and z.';
      return;
    }
    this.picked = picked;
    this.loadPlot();
  }

  async loadPlot() {
    if (this.picked.length < 2) return;
    this.plotData = await getJson(`/v1/dashboard/searches/${this.searchId}/plot`, { objectives: this.picked });
    const c = this.plotData.counts;
    const shown = this.plotData.thinned ? `showing ${fmt(c.shown)} of ${fmt(c.plottable)} (front complete, the rest a stratified sample)` : `showing all ${fmt(c.shown)}`;
    const own = (this.search.spec.objectives || []).map((n) => String(n).trim());
    const allOwn = own.length === this.picked.length && own.every((n) => this.picked.includes(n));
    // The front in other objectives than the search's differs from the header's count: say so.
    const frontText = allOwn ? `front ${fmt(c.front)}` : `front ${fmt(c.front)} in the plotted objectives (the search's front over ${own.join(', ')}: ${fmt(this.search.front_size)})`;
    const bounds = parseConstraints(this.search.spec.constraints);
    const boundText = bounds.length
      ? ` · bounds: ${bounds.map((b) => { const { unit, divisor } = objectiveUnit(b.name); return `${b.name} ${b.op} ${Number((b.bound / divisor).toPrecision(4))}${unit ? ` ${unit}` : ''}`; }).join(', ')}`
      : '';
    this.counts.replaceChildren(
      el('span', { class: 'front-count', dataset: { front: String(c.front) } }, frontText),
      ` · feasible ${fmt(c.feasible)} · infeasible ${fmt(c.infeasible)} · failed ${fmt(c.failed)} · ${shown}`,
      el('span', { class: 'bounds', id: 'plot-bounds' }, boundText));
    await this.drawPlot();
    // Something to look at from the start: the first front member, until the user picks a trial.
    if (this.selected === null && this.plotData.front.numbers.length) await this.select(this.plotData.front.numbers[0]);
  }

  async drawPlot() {
    if (!window.Plotly || !this.plotData) return;
    const selected = this.selectedPoint();
    await drawPareto(this.plotDiv, this.plotData, selected, this.logBox.checked, parseConstraints(this.search.spec.constraints));
    if (!this.plotDiv.dataset.bound) {
      this.plotDiv.dataset.bound = '1';
      this.plotDiv.on('plotly_click', (event) => {
        const point = event.points?.[0];
        if (point && point.customdata !== undefined) this.select(Number(point.customdata));
      });
      this.plotDiv.on('plotly_hover', (event) => this.hover(event));
      this.plotDiv.on('plotly_unhover', () => { this.hoverCard.hidden = true; });
    }
    this.plotDiv.dataset.rendered = String(Number(this.plotDiv.dataset.rendered || 0) + 1);
  }

  selectedPoint() {
    const detail = this.selected === null ? null : this.details.get(this.selected);
    if (!detail || !this.plotData) return null;
    const values = detail.trial.values;
    const coords = this.plotData.objectives.map((o) => values[o.name]);
    if (coords.some((v) => v === undefined)) return null;
    return { number: detail.trial.number, x: coords[0], y: coords[1], z: coords[2] };
  }

  async trialDetail(number) {
    if (!this.details.has(number)) {
      this.details.set(number, await getJson(`/v1/dashboard/searches/${this.searchId}/trials/${number}`));
    }
    return this.details.get(number);
  }

  async hover(event) {
    const point = event.points?.[0];
    if (!point || point.customdata === undefined) return;
    const number = Number(point.customdata);
    this.hovering = number;
    const detail = await this.trialDetail(number);
    if (this.hovering !== number) return;
    // A bit-width config has hundreds of entries: its stages stand for it.
    const text = detail.precision
      ? precisionSummaryText(detail.precision)
      : Object.entries(detail.trial.config).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join('\n');
    this.hoverCard.replaceChildren(
      el('div', { class: 'hover-title' }, `trial ${number}`, detail.on_front ? el('span', { class: 'badge front' }, 'front') : null),
      el('pre', { class: 'hover-config' }, text));
    this.hoverCard.hidden = false;
  }

  async select(number) {
    const detail = await this.trialDetail(number);
    this.selected = number;
    this.table.markSelected(number);
    this.renderDetail(detail);
    if (detail.precision) drawPrecision(this.structure, detail.precision);
    else drawStructure(this.structure, detail.stages);
    this.drawPlot();
  }

  renderDetail(detail) {
    const t = detail.trial;
    const objectives = searchObjectives(this.search.spec);
    const rows = objectives.map((o) => el('tr', {}, el('th', {}, o), el('td', { class: 'num' }, withUnit(o, t.values[o]))));
    const metricRows = Object.entries(t.metrics || {})
      .filter(([, v]) => typeof v !== 'object')
      .map(([k, v]) => el('tr', { class: 'muted' }, el('th', {}, k), el('td', { class: 'num' }, fmt(v))));
    this.detail.replaceChildren(
      el('div', { class: 'detail-head' },
        el('h3', { id: 'selected-number', dataset: { number: String(t.number) } }, `Trial ${t.number}`),
        detail.on_front ? el('span', { class: 'badge front' }, 'on the front') : null,
        t.state === 'failed' ? el('span', { class: 'badge status-failed' }, 'failed') : null,
        t.feasible ? null : el('span', { class: 'badge warn' }, 'infeasible')),
      ...(t.error ? [el('pre', { class: 'error-text' }, t.error)] : []),
      el('table', { class: 'kv' }, rows, metricRows),
      el('div', { class: 'exports' }, this.exportButtons(detail)),
      el('details', { open: !detail.precision, id: 'trial-config-details' },
        el('summary', {}, `config (${t.config_id.slice(0, 12)}, ${Object.keys(t.config).length} entries)`),
        el('pre', { id: 'trial-config', class: 'config' }, JSON.stringify(t.config, null, 2))));
  }

  exportButtons(detail) {
    const t = detail.trial;
    const download = () => {
      const body = {
        space: detail.space, space_options: detail.space_options, config: t.config,
        config_id: t.config_id, values: t.values, search_id: detail.search_id, trial: t.number,
      };
      const url = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2)], { type: 'application/json' }));
      const a = el('a', { href: url, download: `${detail.space}-${shortId(detail.search_id)}-trial${t.number}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 1000);
      showNotice(null);
    };
    const buttons = [el('button', { id: 'export-json', onclick: download }, 'Download config (JSON)')];
    const template = this.capabilities.export_url;
    if (template) {
      for (const format of this.capabilities.export_formats.filter((f) => f !== 'json')) {
        const href = template.replace('{search_id}', detail.search_id).replace('{number}', t.number) + `?format=${format}`;
        // A plain link where the server needs no key; with a key, fetched with its header (a link
        // cannot send one) and handed to the browser as a download.
        const onclick = async (event) => {
          if (!apiKey()) return;
          event.preventDefault();
          showNotice(`Exporting trial ${t.number} as ${format}…`);
          const response = await fetch(href, { headers: authHeaders() });
          if (!response.ok) {
            const body = await response.json().catch(() => ({ detail: response.statusText }));
            showNotice(null);
            showError(new ApiError(response.status, body.detail ?? body));
            return;
          }
          const disposition = response.headers.get('content-disposition') || '';
          const name = (disposition.match(/filename="?([^";]+)"?/) || [])[1] || `trial${t.number}.${format}`;
          const url = URL.createObjectURL(await response.blob());
          const a = el('a', { href: url, download: name });
          document.body.append(a);
          a.click();
          a.remove();
          window.setTimeout(() => URL.revokeObjectURL(url), 1000);
          showNotice(null);
        };
        const label = `Export ${format === 'coreml' ? 'Core ML' : format.toUpperCase()}`;
        buttons.push(el('a', { class: 'button', id: `export-${format}`, href, onclick }, label));
      }
    }
    return buttons;
  }

  async loadSteps() {
    const page = await getJson(`/v1/searches/${this.searchId}/steps`);
    this.stepsPanel.hidden = page.total === 0;
    if (!page.total) return;
    const actions = (list) => (list || []).map((a) => `${a.choice} ${a.from}→${a.to}`).join(', ');
    const signed = (v) => (v === null || v === undefined ? '–' : `${v > 0 ? '+' : ''}${fmt(v)}`);
    const head = el('tr', {}, ['step', 'kind', 'taken', 'quality change', 'latency change (ms)', 'score', 'runner-up (score)']
      .map((h) => el('th', {}, h)));
    const rows = page.items.map((s) => el('tr', { dataset: { step: String(s.step) } },
      el('td', {}, String(s.step)),
      el('td', {}, s.kind),
      el('td', { class: 'mono small' }, actions(s.taken) || s.reason || '–'),
      el('td', {}, signed(s.d_quality)),
      el('td', {}, signed(s.d_latency_ms)),
      el('td', {}, s.score.map(fmt).join(', ') || '–'),
      el('td', { class: 'mono small' }, s.runner_up ? `${actions(s.runner_up.actions)} (${fmt(s.runner_up.score)})` : '–')));
    const rule = page.items.find((s) => s.ranked_by)?.ranked_by;
    this.steps.replaceChildren(
      el('table', { class: 'grid', id: 'steps-table' }, el('thead', {}, head), el('tbody', {}, rows)),
      el('p', { class: 'muted small' }, rule ? `Score: ${rule}; smaller is better.` : ''));
  }

  async loadHypervolume() {
    const curve = await getJson(`/v1/dashboard/searches/${this.searchId}/hypervolume`);
    if (window.Plotly && curve.evaluations.length) await drawHypervolume(this.hvDiv, curve);
    const last = curve.hypervolume.at(-1);
    const scale = curve.normalized_by === 'anchors'
      ? 'Normalised by the space\u2019s smallest and largest subnets (values beyond them clipped), as the live figure above'
      : 'Normalised by the range of the trials seen (min..max per objective): the runner could not evaluate the space\u2019s anchors';
    this.hvNote.textContent = curve.evaluations.length
      ? `${scale}; reference ${curve.reference}: ${fmt(last)} after ${fmt(curve.evaluations.at(-1))} evaluations ` +
        `(live figure: ${fmt(curve.live_hypervolume)}).`
      : curve.reason || 'No evaluations yet.';
  }
}
