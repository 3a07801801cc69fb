// Hash routes (#/, #/search/ID, #/devices), one view at a time, refreshed by one polling loop.

import { apiKey, getJson, pollMs, setApiKey, showError, showNotice } from './api.js';
import { DevicesView } from './devices.js';
import { SearchView } from './search.js';
import { SearchesView } from './searches.js';

const state = { view: null, capabilities: null, timer: null, busy: false };

function routeView(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  if (parts[0] === 'search' && parts[1]) return () => new SearchView(decodeURIComponent(parts[1]), state.capabilities);
  if (parts[0] === 'devices') return () => new DevicesView(state.capabilities);
  return () => new SearchesView();
}

async function show() {
  const root = document.getElementById('view');
  if (state.view) state.view.destroy?.();
  showError(null);
  state.view = routeView(window.location.hash)();
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.classList.toggle('active', link.dataset.nav === state.view.nav);
  }
  root.replaceChildren(state.view.root);
  await refresh();
}

// Each view's refresh() returns whether it still has something changing (a running search).
async function refresh() {
  if (state.busy || !state.view) return;
  state.busy = true;
  const view = state.view;
  try {
    const live = await view.refresh();
    if (view === state.view) {
      showError(null);
      document.getElementById('live-indicator').classList.toggle('on', Boolean(live));
    }
  } catch (error) {
    if (view === state.view) showError(error);
  } finally {
    state.busy = false;
  }
}

// The key box: a key saved there is sent with every request from then on (the page reloads with it).
function setUpKeyBox() {
  const input = document.getElementById('api-key');
  input.value = apiKey();
  document.getElementById('api-key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    setApiKey(input.value);
    window.location.reload();
  });
}

async function start() {
  setUpKeyBox();
  try {
    state.capabilities = await getJson('/v1/dashboard/capabilities');
  } catch (error) {
    state.capabilities = { plotting_library: false, export_formats: ['json'], export_url: null, device_accuracy: false };
    showError(error);
  }
  if (!window.Plotly) {
    showNotice(
      'Plots are unavailable: /vendor/plotly.min.js did not load (install the `plotly` Python package on the ' +
        'server). Tables and trial details still work.',
    );
  }
  window.addEventListener('hashchange', show);
  await show();
  state.timer = window.setInterval(refresh, pollMs());
}

// Plotly is a deferred classic script; module scripts run after it, so window.Plotly is set by now.
start();
