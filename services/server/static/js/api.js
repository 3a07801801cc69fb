// Talking to the server, formatting numbers, and the small DOM helpers every view uses.

export class ApiError extends Error {
  constructor(status, detail) {
    const text = Array.isArray(detail)
      ? detail.map((d) => (d.field ? `${d.field}: ${d.message}` : d.message)).join('; ')
      : String(detail);
    super(`HTTP ${status}: ${text}`);
    this.status = status;
  }
}

// The API key the user pasted into the key box (localStorage), sent as a bearer token with every call.
const API_KEY_ITEM = 'nas.apiKey';

export function apiKey() {
  try {
    return window.localStorage.getItem(API_KEY_ITEM) || '';
  } catch {
    return '';
  }
}

export function setApiKey(value) {
  const key = String(value || '').trim();
  if (key) window.localStorage.setItem(API_KEY_ITEM, key);
  else window.localStorage.removeItem(API_KEY_ITEM);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

export async function getJson(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  const response = await fetch(url, { headers: { accept: 'application/json', ...authHeaders() } });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) throw new AuthError(response.status, body.detail ?? body);
    throw new ApiError(response.status, body.detail ?? body);
  }
  return body;
}

// 401 (no, unknown or revoked key) and 403 (a key without the scope): say what to do about it.
export class AuthError extends ApiError {
  constructor(status, detail) {
    super(status, detail);
    const what = status === 401
      ? (apiKey() ? 'the server refused the API key in the key box' : 'this server needs an API key')
      : 'the API key in the key box lacks the scope this page needs';
    this.message = `${what}: paste a key with scope searches:read (or admin) into the box at the top right `
      + `(create one with \`nas keys create --name me --scope searches:read\`). ${this.message}`;
  }
}

export function showError(error) {
  const banner = document.getElementById('error-banner');
  if (!error) {
    banner.hidden = true;
    return;
  }
  banner.textContent = `Could not load data: ${error.message ?? error}`;
  banner.hidden = false;
}

export function showNotice(text) {
  const banner = document.getElementById('notice-banner');
  banner.textContent = text || '';
  banner.hidden = !text;
}

// el('div', {class: 'x', onclick: fn}, child, 'text', ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmt(value) {
  if (value === undefined || value === null || Number.isNaN(value)) return '–';
  if (typeof value !== 'number') return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(3);
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  return value.toLocaleString('en-US', { maximumSignificantDigits: 4 });
}

export function statusBadge(status) {
  return el('span', { class: `badge status-${status}` }, status);
}

/** A warning badge for a search that succeeded with warnings (null when it has none); its title
 * holds the warnings themselves. */
export function warningsBadge(warnings) {
  const n = (warnings || []).length;
  if (!n) return null;
  return el('span', { class: 'badge warn', title: warnings.join('\n') }, n === 1 ? '1 warning' : `${n} warnings`);
}

export function progressBar(done, budget, status) {
  const share = budget > 0 ? Math.min(1, done / budget) : 0;
  return el(
    'div',
    { class: `progress status-${status}`, title: `${done} of ${budget} trials` },
    el('div', { class: 'progress-fill', style: `width: ${(share * 100).toFixed(1)}%` }),
    el('span', { class: 'progress-text', dataset: { done: String(done), budget: String(budget) } },
      `${done} / ${budget}`),
  );
}

// The unit an objective is shown in and the divisor from its stored value: trials store latency in
// ms, params and MACs as counts, size_mb in MB (nas/objectives.py).
const UNITS = { params: ['M params', 1e6], macs: ['GMACs', 1e9], size_mb: ['MB', 1], bits: ['bits', 1] };

export function objectiveUnit(name) {
  if (name.startsWith('latency:')) return { unit: 'ms', divisor: 1 };
  const [unit, divisor] = UNITS[name] || ['', 1];
  return { unit, divisor };
}

// An objective's stored value in its unit: `3.21 M params`, `4.1 ms`.
export function withUnit(name, value) {
  if (value === null || value === undefined) return fmt(value);
  const { unit, divisor } = objectiveUnit(name);
  return unit ? `${fmt(value / divisor)} ${unit}` : fmt(value);
}

// The latency-table phase of a search (progress.latency_table) in words: live counts and ETA while the
// scheduler measures, what it measured once done; '' when nothing was measured.
export function tableText(progress) {
  const table = (progress || {}).latency_table;
  if (!table) return '';
  const counts = `${table.done.toLocaleString('en-US')} / ${table.total.toLocaleString('en-US')} entries of ${table.device}`;
  if (progress.phase === 'measuring latency table') return `measuring latency table: ${counts}, ETA ${duration(table.eta_s)}`;
  return `latency table: ${table.total.toLocaleString('en-US')} entries of ${table.device} measured in ${duration(table.elapsed_s)}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return 'unknown';
  const whole = Math.round(seconds);
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${String(whole % 60).padStart(2, '0')}s`;
  return `${Math.floor(whole / 3600)}h ${String(Math.floor((whole % 3600) / 60)).padStart(2, '0')}m`;
}

// The objectives a search's values can be plotted in: its objectives, then those its constraints bound.
export function searchObjectives(spec) {
  const names = (spec.objectives || []).map((n) => String(n).trim());
  for (const c of spec.constraints || []) {
    const match = /^\s*([^<>=\s]+)/.exec(String(c));
    if (match) names.push(match[1]);
  }
  return [...new Set(names)];
}

export function shortId(id) {
  return id.slice(0, 8);
}

export function pollMs() {
  const asked = Number(new URLSearchParams(window.location.search).get('poll'));
  return asked >= 100 ? asked : 2000;
}
