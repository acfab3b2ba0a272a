// Attachments. Files picked with the attach button, dropped on the conversation or pasted
// into the composer upload at once, one XMLHttpRequest each (for its progress bar), and wait
// as chips above the composer until sent. Files a message carries are drawn as an image grid
// (a click opens the viewer) or as file cards with a download button.
// Their bytes need the bearer token, so they are fetched with it and shown through blob: URLs,
// revoked once nothing on screen shows them (the token never goes in a URL).
//
// Hooks for browser tests:
//   composer  #attach (button), #attach-input (input[type=file][multiple]), #composer-files >
//             li.upload-chip[data-state="uploading|done|failed"] with .upload-name, .upload-size,
//             progress.upload-progress (while uploading), .upload-error (the server's message),
//             button.upload-remove; #chat-pane.drag-over while files are dragged over it
//   messages  li.message .attachments > .attachment-grid.count-N (N: 1..4) > button.attachment-image
//             [data-index] > img[data-src] (.more "+N" on the fourth when there are more);
//             .attachment-file[data-attachment-id] with .file-name, .file-size, button.file-download
//   viewer    #attachment-viewer (dialog) with #viewer-image, #viewer-caption, #viewer-prev,
//             #viewer-next, #viewer-download, #viewer-close

import { fetchBlob, uploadFile } from './api.js';
import { state } from './store.js';
import { $, el } from './ui.js';

const UPLOADS = '/api/v1/messenger/uploads';
export const MAX_FILES = 10; // per message, as the server allows
// Images the server reads the size of and makes thumbnails of; any other type is a file card.
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
const GRID_TILES = 4;
const SINGLE_MAX_PX = 320;
const UNKNOWN_SIZE = { width: 240, height: 180 };
// A download's blob must outlive the click that starts it; no browser needs it longer than this.
const DOWNLOAD_URL_KEEP_MS = 60_000;

let hooks = { onError: () => {} };
let nextKey = 0;
const drafts = new Map(); // conversation id -> [chip item], files not sent yet

// ---- Sizes

/** A byte count as people read it: 512 B, 3.4 KB, 12 MB. */
export function formatSize(bytes) {
  const size = Number(bytes) || 0;
  if (size < 1024) return `${size} B`;
  const [value, unit] = size < 1024 * 1024 ? [size / 1024, 'KB'] : [size / (1024 * 1024), 'MB'];
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

// Shown inline only what the server made a thumbnail of (pushes say "Photo" by the same rule).
const isImage = (attachment) => Boolean(attachment.thumbnail_url) && IMAGE_TYPES.has(attachment.content_type);

/** A line for a message that has files and no text (conversation list, notifications). */
export function attachmentSummary(message) {
  const list = attachmentsOf(message);
  if (!list.length) return '';
  if (list.every(isImage)) return list.length === 1 ? '📷 Photo' : `📷 ${list.length} photos`;
  return list.length === 1 ? `📎 ${list[0].name}` : `📎 ${list.length} files`;
}

function attachmentsOf(message) {
  if (!Array.isArray(message?.attachments)) return [];
  return message.attachments.filter((a) => a && typeof a.url === 'string' && typeof a.name === 'string');
}

// ---- Composer: chips and uploads

const draftFor = (conversationId) => drafts.get(conversationId) ?? [];

/** Whether the conversation's composer holds a finished upload (so Send may go without text). */
export function hasReadyFiles(conversationId) {
  return draftFor(conversationId).some((item) => item.state === 'done');
}

/**
 * Takes the finished uploads out of the composer for a send: {ids, files} (files: what the
 * pending message shows). Uploads still running or failed stay.
 */
export function takeAttachments(conversationId) {
  const ready = draftFor(conversationId).filter((item) => item.state === 'done');
  for (const item of ready) dropItem(conversationId, item);
  showComposerFiles();
  return {
    ids: ready.map((item) => item.upload.id),
    files: ready.map((item) => ({ name: item.upload.name, size: item.upload.size })),
  };
}

/** Enables Send when there is text or a finished upload. */
export function updateSendButton() {
  const text = $('composer').value.trim();
  $('send').disabled = !text && !(state.activeId && hasReadyFiles(state.activeId));
}

function addFiles(fileList) {
  const conversationId = state.activeId;
  const files = [...fileList].filter((file) => file instanceof File);
  if (!conversationId || !files.length) return;
  if (!drafts.has(conversationId)) drafts.set(conversationId, []);
  const items = drafts.get(conversationId);
  const room = MAX_FILES - items.length;
  if (files.length > room) hooks.onError(`At most ${MAX_FILES} files go with one message.`);
  for (const file of files.slice(0, Math.max(0, room))) {
    const item = { key: ++nextKey, file, name: file.name || 'image', size: file.size, state: 'uploading', sent: 0 };
    items.push(item);
    startUpload(conversationId, item);
  }
  showComposerFiles();
}

function startUpload(conversationId, item) {
  item.request = uploadFile(UPLOADS, item.file, (sent, total) => {
    item.sent = sent;
    item.total = total;
    drawProgress(item);
  });
  item.request.done.then((upload) => {
    item.state = 'done';
    item.upload = upload;
  }, (error) => {
    if (error.code === 'aborted') return; // removed by the person: already gone
    item.state = 'failed';
    item.error = error.message;
  }).finally(() => {
    item.request = null;
    if (!draftFor(conversationId).includes(item)) return;
    item.node = null; // drawn again in its new state
    if (state.activeId === conversationId) showComposerFiles();
  });
}

function dropItem(conversationId, item) {
  item.request?.abort();
  if (item.preview) URL.revokeObjectURL(item.preview);
  const items = draftFor(conversationId).filter((other) => other !== item);
  if (items.length) drafts.set(conversationId, items);
  else drafts.delete(conversationId);
}

function drawProgress(item) {
  const bar = item.node?.querySelector('.upload-progress');
  if (!bar) return;
  bar.max = item.total || item.size || 1;
  bar.value = item.sent;
}

function chipNode(conversationId, item) {
  // A local preview of an image costs nothing: the bytes are the person's own.
  if (!item.preview && IMAGE_TYPES.has(item.file.type)) item.preview = URL.createObjectURL(item.file);
  const remove = el('button', {
    type: 'button',
    class: 'upload-remove',
    'aria-label': item.state === 'uploading' ? `Cancel the upload of ${item.name}` : `Remove ${item.name}`,
    title: item.state === 'uploading' ? 'Cancel' : 'Remove',
    text: '×',
  });
  remove.addEventListener('click', () => {
    dropItem(conversationId, item);
    showComposerFiles();
    $('composer').focus();
  });
  const node = el('li', { class: 'upload-chip', dataset: { state: item.state } },
    item.preview
      ? el('img', { class: 'upload-thumb', src: item.preview, alt: '' })
      : fileIcon('upload-icon'),
    el('span', { class: 'upload-text' },
      el('span', { class: 'upload-name', text: item.name, title: item.name }),
      el('span', { class: 'upload-size', text: formatSize(item.size) }),
      item.state === 'uploading' && el('progress', {
        class: 'upload-progress', max: item.size || 1, value: item.sent, 'aria-label': `Uploading ${item.name}`,
      }),
      item.state === 'failed' && el('span', { class: 'upload-error', role: 'alert', text: item.error })),
    remove);
  return node;
}

/** Draws the chips of the open conversation's composer (call on opening one). */
export function showComposerFiles() {
  const list = $('composer-files');
  const conversationId = state.activeId;
  const items = conversationId ? draftFor(conversationId) : [];
  list.replaceChildren(...items.map((item) => {
    item.node ??= chipNode(conversationId, item);
    return item.node;
  }));
  list.hidden = items.length === 0;
  $('attach').disabled = !conversationId || items.length >= MAX_FILES;
  updateSendButton();
}

/** Forgets every composer file (signed out): uploads in flight stop. */
export function clearComposerFiles() {
  for (const [conversationId, items] of [...drafts]) {
    for (const item of items) dropItem(conversationId, item);
  }
  drafts.clear();
  closeViewer();
}

// ---- Images on screen: fetched with the token, shown through blob: URLs

const images = new Map(); // attachment path -> {promise, objectUrl, holders: Set<img>}

function showImage(img, path) {
  let entry = images.get(path);
  if (!entry) {
    entry = { objectUrl: null, holders: new Set() };
    const current = entry;
    entry.promise = fetchBlob(path).then((blob) => {
      current.objectUrl = URL.createObjectURL(blob);
      // Everything that wanted it left the screen while it came.
      if (images.get(path) !== current) URL.revokeObjectURL(current.objectUrl);
      return current.objectUrl;
    });
    entry.promise.catch(() => {
      if (images.get(path) === current) images.delete(path); // the next drawing tries again
    });
    images.set(path, entry);
  }
  entry.holders.add(img);
  const current = entry;
  entry.promise.then((url) => {
    if (current.holders.has(img)) img.src = url;
  }, () => img.closest('.attachment-image')?.classList.add('broken'));
}

function releaseImage(img) {
  const entry = images.get(img.dataset.src);
  if (!entry?.holders.delete(img) || entry.holders.size) return;
  images.delete(img.dataset.src);
  if (entry.objectUrl) URL.revokeObjectURL(entry.objectUrl);
}

/** A message node left the list: its images' blob URLs go unless another node shows them. */
function watchMessages() {
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.removedNodes) {
        // A node moved within the list (reconcile) is connected again by now.
        if (node.nodeType !== Node.ELEMENT_NODE || node.isConnected) continue;
        node.querySelectorAll('img[data-src]').forEach(releaseImage);
      }
    }
  }).observe($('messages'), { childList: true, subtree: true });
}

// ---- Messages

/** Space for a lone image at its aspect ratio, so the list does not jump when it loads. */
function singleSize(attachment) {
  const width = Number(attachment.width);
  const height = Number(attachment.height);
  if (!(width > 0 && height > 0)) return UNKNOWN_SIZE;
  const scale = Math.min(1, SINGLE_MAX_PX / width, SINGLE_MAX_PX / height);
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

function imageGrid(imagesOfMessage) {
  const count = imagesOfMessage.length;
  const shown = imagesOfMessage.slice(0, GRID_TILES);
  const grid = el('div', { class: `attachment-grid count-${shown.length}` });
  shown.forEach((attachment, index) => {
    const size = count === 1 ? singleSize(attachment) : null;
    const img = el('img', {
      alt: attachment.name,
      dataset: { src: attachment.thumbnail_url || attachment.url },
      width: size?.width,
      height: size?.height,
    });
    const more = index === GRID_TILES - 1 && count > GRID_TILES ? count - GRID_TILES : 0;
    const tile = el('button', {
      type: 'button',
      class: 'attachment-image',
      dataset: { index },
      'aria-label': more ? `${attachment.name} and ${more} more: open the viewer` : `Open ${attachment.name}`,
    }, img, more > 0 && el('span', { class: 'more', 'aria-hidden': 'true', text: `+${more}` }));
    tile.addEventListener('click', () => openViewer(imagesOfMessage, index));
    showImage(img, img.dataset.src);
    grid.append(tile);
  });
  return grid;
}

function fileCard(attachment) {
  const button = el('button', {
    type: 'button', class: 'file-download', 'aria-label': `Download ${attachment.name}`, title: 'Download',
  }, downloadIcon());
  button.addEventListener('click', () => download(attachment, button));
  return el('div', { class: 'attachment-file', dataset: { attachmentId: attachment.id } },
    fileIcon('file-icon'),
    el('span', { class: 'file-text' },
      el('span', { class: 'file-name', text: attachment.name, title: attachment.name }),
      el('span', { class: 'file-size', text: formatSize(attachment.size) })),
    button);
}

/** An outline icon of the given path data (drawn, not a font glyph). */
function icon(className, ...paths) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', className);
  for (const d of paths) {
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

const downloadIcon = () => icon('download-icon', 'M12 3v12', 'm7 10 5 5 5-5', 'M5 21h14');
const fileIcon = (className) => icon(className, 'M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8Z',
  'M14 3v5h5', 'M9 13h6', 'M9 17h6');

/** What a message's files look like: an image grid and file cards; null without any. */
export function attachmentsNode(message) {
  if (message.deleted_at) return null;
  const list = attachmentsOf(message);
  if (!list.length) return null;
  const pictures = list.filter(isImage);
  return el('div', { class: 'attachments' },
    pictures.length > 0 && imageGrid(pictures),
    ...list.filter((attachment) => !isImage(attachment)).map(fileCard));
}

/** The files of a message still on its way: their names. */
export function pendingFilesNode(item) {
  if (!item.files?.length) return null;
  return el('ul', { class: 'pending-files' },
    ...item.files.map((file) => el('li', { text: `📎 ${file.name} (${formatSize(file.size)})` })));
}

/** Saves a file: fetched with the token, handed to the browser through <a download>. */
async function download(attachment, button) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const url = URL.createObjectURL(await fetchBlob(attachment.url));
    const link = el('a', { href: url, download: attachment.name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_URL_KEEP_MS);
  } catch (error) {
    hooks.onError(`${attachment.name}: ${error.message}`);
  } finally {
    button.disabled = false;
    button.setAttribute('aria-busy', 'false');
  }
}

// ---- The viewer

const viewer = { list: [], index: 0, objectUrl: null, generation: 0 };

function openViewer(list, index) {
  viewer.list = list;
  const dialog = $('attachment-viewer');
  if (!dialog.open) dialog.showModal();
  showInViewer(index);
}

async function showInViewer(index) {
  const count = viewer.list.length;
  viewer.index = (index + count) % count;
  const attachment = viewer.list[viewer.index];
  const generation = ++viewer.generation;
  const image = $('viewer-image');
  dropViewerImage();
  image.alt = attachment.name;
  $('viewer-caption').textContent = count > 1
    ? `${attachment.name} · ${viewer.index + 1} of ${count}` : attachment.name;
  $('viewer-status').textContent = 'Loading…';
  $('viewer-prev').hidden = count < 2;
  $('viewer-next').hidden = count < 2;
  try {
    const blob = await fetchBlob(attachment.url);
    if (generation !== viewer.generation) return; // moved on, or closed, meanwhile
    viewer.objectUrl = URL.createObjectURL(blob);
    image.src = viewer.objectUrl;
    image.hidden = false;
    $('viewer-status').textContent = '';
  } catch (error) {
    if (generation === viewer.generation) $('viewer-status').textContent = error.message;
  }
}

function dropViewerImage() {
  const image = $('viewer-image');
  image.hidden = true;
  image.removeAttribute('src');
  if (viewer.objectUrl) URL.revokeObjectURL(viewer.objectUrl);
  viewer.objectUrl = null;
}

function closeViewer() {
  const dialog = $('attachment-viewer');
  if (dialog?.open) dialog.close(); // the close event cleans up
}

function initViewer() {
  const dialog = $('attachment-viewer');
  $('viewer-close').addEventListener('click', closeViewer);
  $('viewer-prev').addEventListener('click', () => showInViewer(viewer.index - 1));
  $('viewer-next').addEventListener('click', () => showInViewer(viewer.index + 1));
  $('viewer-download').addEventListener('click', (event) => {
    const attachment = viewer.list[viewer.index];
    if (attachment) download(attachment, event.currentTarget);
  });
  dialog.addEventListener('keydown', (event) => {
    if (viewer.list.length < 2) return;
    if (event.key === 'ArrowLeft') showInViewer(viewer.index - 1);
    else if (event.key === 'ArrowRight') showInViewer(viewer.index + 1);
  });
  // A click on the backdrop (the dialog itself, outside its content) closes it too.
  dialog.addEventListener('click', (event) => {
    if (event.target === dialog) closeViewer();
  });
  // Escape, the close button or the backdrop: the full image's blob URL goes.
  dialog.addEventListener('close', () => {
    viewer.generation += 1;
    viewer.list = [];
    dropViewerImage();
  });
}

// ---- Wiring

function hasFiles(event) {
  return [...(event.dataTransfer?.types ?? [])].includes('Files');
}

function initComposer() {
  const input = $('attach-input');
  $('attach').addEventListener('click', () => input.click());
  input.addEventListener('change', () => {
    addFiles(input.files);
    input.value = ''; // the same file may be picked again
  });

  const pane = $('chat-pane');
  let depth = 0; // dragenter/dragleave fire for every child crossed
  pane.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    pane.classList.add('drag-over');
  });
  pane.addEventListener('dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault(); // allows the drop
    event.dataTransfer.dropEffect = 'copy';
  });
  pane.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) pane.classList.remove('drag-over');
  });
  pane.addEventListener('drop', (event) => {
    depth = 0;
    pane.classList.remove('drag-over');
    if (!event.dataTransfer?.files.length) return;
    event.preventDefault(); // the browser would open the file instead
    addFiles(event.dataTransfer.files);
  });

  $('composer').addEventListener('paste', (event) => {
    const files = event.clipboardData?.files;
    if (!files?.length) return; // plain text pastes as usual
    event.preventDefault();
    addFiles(files);
  });
  $('composer').addEventListener('input', updateSendButton);
  // Editing a message fills the composer from script (no input event), then focuses it.
  $('composer').addEventListener('focus', updateSendButton);
}

/** onError(text): shows what went wrong outside a chip (a download, too many files). */
export function initAttachments({ onError }) {
  hooks = { onError };
  initComposer();
  initViewer();
  watchMessages();
  showComposerFiles();
}
