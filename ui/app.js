// liverec console: Live, Recordings, Tasks and Health over the daemon's own HTTP API.
//
// Why plain JS: the daemon embeds these files in its binary (include_bytes!) and serves
// them as they are. No framework and no build step means nothing to install, no bundle
// to rebuild when the API changes, nothing generated to review, and the file a browser
// runs is the file in the repository. The one dependency, hls.js (for HLS playback where
// the browser has no native HLS), is vendored under vendor/hls.js with its own notes.
//
// Rules the page keeps: every URL is relative (the API base is the directory above the
// page, so a path prefix or another host name works); the API token lives in
// sessionStorage only and goes out as an `Authorization: Bearer` header, never in a URL;
// data from the API is put into the page as text, never as HTML.
'use strict';

(() => {
  // The page lives at <base>/ui/; the API is <base>/v1/…, /healthz, /metrics.
  const base = new URL('../', location.href);
  const TOKEN_KEY = 'liverec.token';
  const POLL_MS = 2000;
  const PAGE_SIZE = 50;

  const $ = (sel, root = document) => root.querySelector(sel);

  // Read by the browser tests; also what the player shows.
  const state = {
    view: 'live',
    loginShown: false,
    playerErrors: [],
    rec: { params: new URLSearchParams(), token: null, pages: [] },
    tasks: { token: null, pages: [] },
    busy: {},
  };
  window.liverecConsole = state;

  // ---- small DOM helpers -------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const cell = (field, ...content) => el('td', { 'data-field': field }, ...content);

  function show(node, text) {
    node.textContent = text || '';
    node.hidden = !text;
  }

  // ---- formatting --------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, '0');

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return '';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return '';
    if (s < 60) return `${(Math.round(s * 10) / 10).toFixed(1)} s`;
    const t = Math.round(s);
    const h = Math.floor(t / 3600);
    const m = Math.floor((t % 3600) / 60);
    return h ? `${h}h ${pad(m)}m ${pad(t % 60)}s` : `${m}m ${pad(t % 60)}s`;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  const fmtNum = (v, digits) => (typeof v === 'number' ? v.toFixed(digits) : '');

  // A datetime-local value (local time) as unix seconds; null when empty.
  function unixOf(value) {
    if (!value) return null;
    const t = new Date(value).getTime();
    return Number.isNaN(t) ? null : Math.floor(t / 1000);
  }

  // ---- the API -----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  class Unauthorized extends Error {}

  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  function authHeaders() {
    const t = token();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  const apiUrl = (path) => new URL(path, base);

  // The absolute URL of a stored file: GET <base>/v1/files/<key>.
  const fileUrl = (key) =>
    apiUrl(`v1/files/${key.split('/').map(encodeURIComponent).join('/')}`).href;

  // fetch with the token; a 401 shows the login form and throws Unauthorized, another
  // error status throws ApiError with the API's own code and message.
  async function request(path, { method = 'GET', body } = {}) {
    const headers = authHeaders();
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(typeof path === 'string' ? apiUrl(path) : path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
    if (res.status === 401) {
      const e = await readError(res);
      needLogin(e.message);
      throw new Unauthorized(e.message);
    }
    if (!res.ok) throw await readError(res);
    return res;
  }

  async function readError(res) {
    const text = await res.text();
    try {
      const j = JSON.parse(text);
      if (j && typeof j.message === 'string') return new ApiError(res.status, j.code, j.message);
    } catch (_) {
      // not JSON: the text itself
    }
    return new ApiError(res.status, null, text || `${res.status} ${res.statusText}`);
  }

  const api = async (path, opts) => (await request(path, opts)).json();

  // ---- login -------------------------------------------------------------------------

  function needLogin(message) {
    const refused = token() !== '';
    sessionStorage.removeItem(TOKEN_KEY);
    state.loginShown = true;
    clearData();
    for (const v of document.querySelectorAll('.view')) v.hidden = true;
    $('#login').hidden = false;
    $('#logout').hidden = true;
    show($('#login-error'), refused ? `The token was refused: ${message}` : '');
    $('#token').value = '';
    $('#token').focus();
  }

  function clearData() {
    stopPlayer();
    $('#player').hidden = true;
    for (const t of ['#live-table', '#rec-table', '#tasks-table']) $(`${t} tbody`).replaceChildren();
    for (const dd of document.querySelectorAll('#health dd > span, #health dd:not([data-field="spool"])')) {
      dd.textContent = '';
    }
    $('#metrics').hidden = true;
    $('#metrics').textContent = '';
    show($('#task-result'), '');
    show($('#error'), '');
  }

  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('#token').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    state.loginShown = false;
    $('#login').hidden = true;
    show($('#login-error'), '');
    $('#logout').hidden = false;
    route();
  });

  $('#logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    needLogin('');
  });

  // ---- views and polling -------------------------------------------------------------

  const loaders = {
    live: loadLive,
    recordings: loadRecordings,
    tasks: loadTasks,
    health: loadHealth,
  };

  function route() {
    const want = location.hash.replace(/^#/, '');
    state.view = loaders[want] ? want : 'live';
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.view === state.view) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    if (state.loginShown) return;
    $('#logout').hidden = token() === '';
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${state.view}`;
    run(state.view);
  }

  // Runs a view's loader unless it is already running; reports failures on the page.
  async function run(view) {
    if (state.busy[view]) return;
    state.busy[view] = true;
    try {
      await loaders[view]();
      if (!state.loginShown) show($('#error'), '');
    } catch (e) {
      if (!(e instanceof Unauthorized)) show($('#error'), `Could not load ${view}: ${e.message}`);
    } finally {
      state.busy[view] = false;
    }
  }

  window.addEventListener('hashchange', route);
  setInterval(() => {
    if (!state.loginShown && !document.hidden && state.view !== 'recordings') run(state.view);
  }, POLL_MS);

  // ---- Live --------------------------------------------------------------------------

  async function loadLive() {
    const { streams } = await api('v1/streams');
    if (state.loginShown) return;
    const rows = streams.map(liveRow);
    $('#live-table tbody').replaceChildren(...rows);
    $('#live-empty').hidden = rows.length > 0;
    $('#live-updated').textContent = `Last update ${fmtTime(Date.now())}.`;
  }

  function liveRow(s) {
    const id = `${s.domain}/${s.app}/${s.stream}`;
    const waiting = s.state === 'waiting';
    const v = s.video;
    const a = s.audio;
    const local = 'video' in s; // other nodes' entries carry no media details
    const none = local ? 'none' : '';
    const uptime = typeof s.uptime_s === 'number' ? s.uptime_s
      : s.started ? Date.now() / 1000 - s.started : null;
    return el('tr', { 'data-stream': id, 'data-state': s.state, 'data-node': s.node_id },
      cell('stream', el('span', { text: id }), s.node_id ? el('small', { class: 'muted', text: ` on ${s.node_id}` }) : null),
      cell('state', waiting
        ? el('span', { class: 'waiting', text: `waiting until ${fmtTime(s.deadline_ms ?? s.deadline * 1000)}` })
        : el('span', { class: 'live', text: 'live' })),
      cell('peer', s.peer || ''),
      cell('video', v ? [v.codec, v.profile, v.level].filter(Boolean).join(' ') : waiting ? '' : none),
      cell('resolution', v && v.width ? `${v.width}x${v.height}` : ''),
      cell('fps', fmtNum(s.fps, 1)),
      cell('audio', a ? audioText(a) : waiting ? '' : none),
      cell('bitrate', typeof s.bitrate_kbps === 'number' ? `${Math.round(s.bitrate_kbps)} kb/s` : ''),
      cell('uptime', waiting ? '' : fmtDuration(uptime)),
      cell('tasks', (s.tasks || []).join(', ')),
      cell('files', openFiles(s.recordings)),
      cell('actions', waiting ? null : el('button', {
        type: 'button', 'data-action': 'clip', text: 'Clip…', title: `Clip ${id} on the Tasks page`,
        onclick: () => prefill(s),
      })));
  }

  function audioText(a) {
    const ch = a.channels === 1 ? 'mono' : a.channels === 2 ? 'stereo' : a.channels ? `${a.channels} ch` : '';
    const rate = a.sample_rate ? `${a.sample_rate / 1000} kHz` : '';
    return [a.codec, rate, ch].filter(Boolean).join(' ');
  }

  function openFiles(recs) {
    if (!recs || recs.length === 0) return '';
    return el('ul', { class: 'files' }, recs.map((r) => el('li', {
      'data-format': r.format,
      title: `template ${r.template}${r.task_id ? `, task ${r.task_id}` : ''}${r.file_started_ms ? `, since ${fmtTime(r.file_started_ms)}` : ''}`,
      text: `${r.format} #${r.file_seq}${r.segment !== null && r.segment !== undefined ? ` seg ${r.segment}` : ''}, ${fmtBytes(r.bytes)}`,
    })));
  }

  // "Clip…" on a live row: the clip form, filled in for that stream.
  function prefill(s) {
    for (const form of [$('#clip-form'), $('#schedule-form')]) {
      form.elements.domain.value = s.domain;
      form.elements.app.value = s.app;
      form.elements.stream.value = s.stream;
    }
    location.hash = '#tasks';
    $('#clip-form').elements.preroll.focus();
  }

  // ---- Recordings --------------------------------------------------------------------

  $('#rec-filter').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const p = new URLSearchParams();
    for (const k of ['domain', 'app', 'stream', 'format']) {
      if (f[k].value.trim()) p.set(k, f[k].value.trim());
    }
    for (const k of ['from', 'to']) {
      const t = unixOf(f[k].value);
      if (t !== null) p.set(k, String(t));
    }
    const size = Number(f.page_size.value);
    if (size > 0) p.set('page_size', String(size));
    state.rec = { params: p, token: null, pages: [] };
    run('recordings');
  });

  $('#rec-next').addEventListener('click', () => {
    state.rec.pages.push(state.rec.token);
    state.rec.token = state.rec.next;
    run('recordings');
  });

  $('#rec-first').addEventListener('click', () => {
    state.rec.pages = [];
    state.rec.token = null;
    run('recordings');
  });

  async function loadRecordings() {
    const p = new URLSearchParams(state.rec.params);
    if (!p.has('page_size')) p.set('page_size', String(PAGE_SIZE));
    if (state.rec.token) p.set('page_token', state.rec.token);
    const { recordings, next_page_token: next } = await api(`v1/recordings?${p}`);
    if (state.loginShown) return;
    state.rec.next = next;
    $('#rec-table tbody').replaceChildren(...recordings.map(recordingRow));
    $('#rec-empty').hidden = recordings.length > 0;
    $('#rec-next').hidden = !next;
    $('#rec-first').hidden = state.rec.pages.length === 0;
  }

  function recordingRow(r) {
    const url = fileUrl(r.key);
    const gaps = r.gaps || [];
    const gapText = gaps.map((g) => `${fmtDuration((g.end_time_ms - g.start_time_ms) / 1000)} at ${fmtDuration(g.offset_ms / 1000)}`).join('; ');
    return el('tr', { 'data-key': r.key, 'data-format': r.format, 'data-task': r.task_id || null },
      cell('stream', `${r.domain}/${r.app}/${r.stream}`),
      cell('format', r.format),
      cell('start', fmtTime(r.start_time_ms)),
      cell('duration', fmtDuration(r.duration)),
      cell('size', fmtBytes(r.size)),
      cell('gaps', el('span', { title: gapText || null, text: String(gaps.length) })),
      cell('expires', r.expire_time ? fmtTime(r.expire_time * 1000) : 'never'),
      cell('task', r.task_id || ''),
      cell('play', el('button', {
        type: 'button',
        'data-action': 'play',
        text: r.format === 'flv' ? 'Download' : 'Play',
        'aria-label': `${r.format === 'flv' ? 'Download' : 'Play'} ${r.key}`,
        onclick: () => play(r).catch((e) => {
          if (!(e instanceof Unauthorized)) playerError(e.message);
        }),
      })),
      cell('url', copyable(url, 'file'), r.url ? copyable(r.url, 'public') : null));
  }

  function copyable(value, kind) {
    const input = el('input', { type: 'text', readonly: true, value, 'data-url': kind, 'aria-label': `${kind} URL`, size: 24 });
    const btn = el('button', {
      type: 'button',
      'data-action': 'copy',
      text: kind === 'public' ? 'Copy public' : 'Copy',
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(value);
        } catch (_) {
          // http on another host is no secure context: the old way.
          input.select();
          document.execCommand('copy');
        }
        btn.textContent = 'Copied';
        setTimeout(() => { btn.textContent = kind === 'public' ? 'Copy public' : 'Copy'; }, 1500);
      },
    });
    return el('span', { class: 'copy' }, input, btn);
  }

  // ---- the player --------------------------------------------------------------------

  let current = null; // { hls, objectUrl, media }

  function stopPlayer() {
    if (!current) return;
    if (current.hls) current.hls.destroy();
    if (current.media) {
      current.media.pause();
      current.media.removeAttribute('src');
      current.media.load();
    }
    if (current.objectUrl) URL.revokeObjectURL(current.objectUrl);
    current = null;
    $('#player-media').replaceChildren();
  }

  function playerError(text) {
    state.playerErrors.push(text);
    show($('#player-error'), text);
  }

  $('#player-close').addEventListener('click', () => {
    stopPlayer();
    $('#player').hidden = true;
  });

  function mediaElement(tag) {
    const m = el(tag, { controls: true, preload: 'auto' });
    m.addEventListener('error', () => {
      const e = m.error;
      if (e) playerError(`media error ${e.code}${e.message ? `: ${e.message}` : ''}`);
    });
    $('#player-media').replaceChildren(m);
    return m;
  }

  async function blobOf(url) {
    return (await request(new URL(url))).blob();
  }

  function startPlaying(media) {
    media.play().catch((e) => {
      if (e.name !== 'AbortError') playerError(`cannot start playback: ${e.message}`);
    });
  }

  async function play(r) {
    stopPlayer();
    state.playerErrors.length = 0;
    show($('#player-error'), '');
    $('#player').hidden = false;
    $('#player').dataset.key = r.key;
    $('#player').dataset.format = r.format;
    $('#player-title').textContent = r.key;
    const url = fileUrl(r.key);
    current = {};
    const mine = current;
    if (r.format === 'hls') {
      const video = mediaElement('video');
      current.media = video;
      if (window.Hls && window.Hls.isSupported()) {
        // hls.js fetches the playlist and its segments (same directory) with the token.
        const hls = new window.Hls({
          xhrSetup: (xhr) => {
            const t = token();
            if (t) xhr.setRequestHeader('Authorization', `Bearer ${t}`);
          },
        });
        current.hls = hls;
        hls.on(window.Hls.Events.ERROR, (_, d) => {
          if (!d.fatal) return;
          const status = d.response && d.response.code;
          if (status === 401) needLogin('missing or wrong bearer token');
          else playerError(`HLS ${d.type}: ${d.details}${status ? ` (HTTP ${status})` : ''}`);
        });
        hls.on(window.Hls.Events.MANIFEST_PARSED, () => startPlaying(video));
        hls.loadSource(url);
        hls.attachMedia(video);
      } else if (!token() && video.canPlayType('application/vnd.apple.mpegurl')) {
        // Native HLS (Safari) sends no header: only without a token.
        video.src = url;
        startPlaying(video);
      } else {
        playerError('This browser cannot play HLS here (no Media Source Extensions).');
      }
      return;
    }
    // Native elements cannot send the token: fetch with it, then play the blob.
    const blob = await blobOf(url);
    if (current !== mine) return; // another Play meanwhile
    const objectUrl = URL.createObjectURL(blob);
    current.objectUrl = objectUrl;
    const name = r.key.split('/').pop();
    if (r.format === 'flv') {
      const a = el('a', { href: objectUrl, download: name, id: 'player-download', text: `Save ${name} (${fmtBytes(blob.size)})` });
      $('#player-media').replaceChildren(el('p', {}, 'Browsers do not play FLV. ', a));
      a.click();
      return;
    }
    const media = mediaElement(r.format === 'aac' ? 'audio' : 'video');
    current.media = media;
    media.src = objectUrl;
    startPlaying(media);
  }

  // ---- Tasks -------------------------------------------------------------------------

  $('#tasks-next').addEventListener('click', () => {
    state.tasks.pages.push(state.tasks.token);
    state.tasks.token = state.tasks.next;
    run('tasks');
  });

  $('#tasks-first').addEventListener('click', () => {
    state.tasks.pages = [];
    state.tasks.token = null;
    run('tasks');
  });

  async function loadTasks() {
    const p = new URLSearchParams({ page_size: String(PAGE_SIZE) });
    if (state.tasks.token) p.set('page_token', state.tasks.token);
    const { tasks, next_page_token: next } = await api(`v1/tasks?${p}`);
    if (state.loginShown) return;
    state.tasks.next = next;
    $('#tasks-table tbody').replaceChildren(...tasks.map(taskRow));
    $('#tasks-empty').hidden = tasks.length > 0;
    $('#tasks-next').hidden = !next;
    $('#tasks-first').hidden = state.tasks.pages.length === 0;
  }

  const FINAL = new Set(['finished', 'stopped']);

  function taskRow(t) {
    return el('tr', { 'data-task': t.task_id, 'data-status': t.status },
      cell('task', el('code', { text: t.task_id })),
      cell('stream', `${t.domain}/${t.app}/${t.stream}`),
      cell('status', t.status),
      cell('start', fmtTime(t.start_time * 1000)),
      cell('end', fmtTime(t.end_time * 1000)),
      cell('preroll', t.preroll_seconds ? `${t.preroll_seconds} s` : ''),
      cell('template', t.template_id ? String(t.template_id) : "stream's"),
      cell('actions', FINAL.has(t.status) ? null : el('button', {
        type: 'button', 'data-action': 'stop', text: 'Stop', 'aria-label': `Stop task ${t.task_id}`,
        onclick: () => stopTask(t.task_id),
      })));
  }

  async function stopTask(id) {
    show($('#task-error'), '');
    try {
      await api(`v1/tasks/${encodeURIComponent(id)}/stop`, { method: 'POST' });
      show($('#task-result'), `Task ${id} stopped.`);
    } catch (e) {
      if (!(e instanceof Unauthorized)) taskError(e);
    }
    run('tasks');
  }

  function taskError(e) {
    // As the API words it; the code after it.
    show($('#task-error'), e.code ? `${e.message} (${e.code})` : e.message);
    $('#task-error').dataset.code = e.code || '';
    show($('#task-result'), '');
  }

  async function createTask(body) {
    show($('#task-error'), '');
    show($('#task-result'), '');
    try {
      const r = await api('v1/tasks', { method: 'POST', body });
      const status = r.task && r.task.status ? ` (${r.task.status})` : '';
      show($('#task-result'), `Task ${r.task_id} created${status}.`);
      $('#task-result').dataset.taskId = r.task_id;
    } catch (e) {
      if (!(e instanceof Unauthorized)) taskError(e);
    }
    run('tasks');
  }

  function taskBase(f) {
    const body = { domain: f.domain.value.trim(), app: f.app.value.trim(), stream: f.stream.value.trim() };
    if (f.template.value !== '') body.template_id = Number(f.template.value);
    return body;
  }

  // "The last N seconds and the next M": a real-time task (the stream must be live)
  // with N seconds of preroll that ends M seconds from now.
  $('#clip-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = taskBase(f);
    body.preroll_seconds = Number(f.preroll.value);
    // Rounded up: at least the next M seconds.
    body.end_time = Math.ceil(Date.now() / 1000) + Number(f.next.value || 5);
    createTask(body);
  });

  $('#schedule-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = taskBase(f);
    body.start_time = unixOf(f.start.value);
    body.end_time = unixOf(f.end.value);
    createTask(body);
  });

  // ---- Health ------------------------------------------------------------------------

  async function loadHealth() {
    const h = await api('healthz');
    if (state.loginShown) return;
    const set = (field, text) => { $(`#health dd[data-field="${field}"]`).textContent = text; };
    const dd = $('#health dd[data-field="status"]');
    dd.textContent = h.status;
    dd.className = h.status === 'ok' ? 'ok' : 'bad';
    const spool = h.spool || {};
    const meter = $('#spool-meter');
    meter.max = spool.max_bytes || 1;
    meter.value = spool.bytes || 0;
    meter.hidden = !spool.max_bytes;
    $('#health dd[data-field="spool"] > span').textContent = spool.max_bytes
      ? `${fmtBytes(spool.bytes)} of ${fmtBytes(spool.max_bytes)}`
      : `${fmtBytes(spool.bytes)} (no limit)`;
    set('uploads_pending', String(h.uploads_pending ?? ''));
    set('index_unpublished', String(h.index_unpublished ?? ''));
    const cb = h.callbacks || {};
    set('callbacks', `${cb.pending ?? 0} pending, ${cb.failed ?? 0} failed` +
      (cb.oldest_pending_ms ? `, oldest since ${fmtTime(cb.oldest_pending_ms)}` : ''));
    set('version', h.version ?? '');
    set('config_source', h.config_source ?? '');
    set('node_id', h.node_id ?? '');
  }

  // The metrics need the token too: fetched with it and shown here; the link itself
  // stays for opening without a token.
  $('#metrics-link').addEventListener('click', async (ev) => {
    ev.preventDefault();
    const pre = $('#metrics');
    if (!pre.hidden) {
      pre.hidden = true;
      return;
    }
    try {
      pre.textContent = await (await request('metrics')).text();
      pre.hidden = false;
    } catch (e) {
      if (!(e instanceof Unauthorized)) show($('#error'), `Could not load metrics: ${e.message}`);
    }
  });

  route();
})();
