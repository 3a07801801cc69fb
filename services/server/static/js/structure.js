// A subnet drawn stage by stage: one card per config group (stage0, down1, mid, ...), left to right,
// with the group's settings and its blocks as bars scaled by their first numeric attribute.

import { el, fmt } from './api.js';

function numericMax(options) {
  const numbers = options.filter((o) => typeof o === 'number');
  return numbers.length ? Math.max(...numbers) : null;
}

function settingChip(setting) {
  const max = typeof setting.value === 'number' ? numericMax(setting.options) : null;
  const share = max ? Math.max(0.08, setting.value / max) : null;
  return el('div', { class: 'setting', title: `${setting.key}: options ${JSON.stringify(setting.options)}` },
    el('span', { class: 'setting-name' }, setting.name),
    el('span', { class: 'setting-value' }, fmt(setting.value)),
    share === null ? null : el('div', { class: 'meter' }, el('div', { style: `width:${(share * 100).toFixed(0)}%` })));
}

function blockBar(block) {
  const main = block.attrs.find((a) => typeof a.value === 'number') || block.attrs[0];
  const max = main ? numericMax(main.options) : null;
  const share = block.active && max ? Math.max(0.12, main.value / max) : 0.12;
  const text = block.attrs.map((a) => `${a.name}=${fmt(a.value)}`).join(' ');
  return el('div', {
    class: `block${block.active ? '' : ' inactive'}`,
    title: block.active ? `block ${block.index}: ${text}` : `block ${block.index}: dropped by the depth`,
  },
  el('span', { class: 'block-index' }, `b${block.index}`),
  el('div', { class: 'block-bar' }, el('div', { style: `width:${(share * 100).toFixed(0)}%` })),
  el('span', { class: 'block-text' }, block.active ? text : 'skipped'));
}

export function drawStructure(container, stages) {
  const cards = [];
  stages.forEach((stage, i) => {
    if (i) cards.push(el('div', { class: 'stage-arrow', 'aria-hidden': 'true' }, '→'));
    const active = stage.blocks.filter((b) => b.active).length;
    cards.push(el('div', { class: 'stage', dataset: { stage: stage.name } },
      el('div', { class: 'stage-title' }, stage.name,
        stage.blocks.length ? el('span', { class: 'muted small' }, ` ${active}/${stage.blocks.length} blocks`) : null),
      stage.settings.map(settingChip),
      stage.blocks.length ? el('div', { class: 'blocks' }, stage.blocks.map(blockBar)) : null));
  });
  container.replaceChildren(el('div', { class: 'stages' }, cards));
}
