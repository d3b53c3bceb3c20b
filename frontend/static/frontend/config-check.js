// The new-cluster form: says as you type whether the config box holds a JSON object (kept out of the page
// so the Content-Security-Policy can refuse inline script).
(function(){const box=document.getElementById('id_config'),out=document.getElementById('config-check');if(!box||!out)return;
function check(){const t=box.value.trim();if(!t){out.textContent='empty: the template\'s default config';return}
try{const v=JSON.parse(t);out.textContent=(v&&typeof v==='object'&&!Array.isArray(v))?'valid JSON object':'must be a JSON object'}catch(e){out.textContent='not valid JSON: '+e.message}}
box.addEventListener('input',check);check();})();
