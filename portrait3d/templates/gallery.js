(function(){var box=document.getElementById('cards'),sel=document.getElementById('sort');
function val(c,k){var v=c.dataset[k];return v===''?null:(k==='name'?v:parseFloat(v));}
function sort(){var how=sel.value.split(':'),k=how[0],dir=how[1]==='desc'?-1:1;
 var cards=Array.prototype.slice.call(box.children);
 cards.sort(function(a,b){var x=val(a,k),y=val(b,k);
  if(x===null&&y===null)return val(a,'order')-val(b,'order');if(x===null)return 1;if(y===null)return -1;
  if(x<y)return -dir;if(x>y)return dir;return val(a,'order')-val(b,'order');});
 cards.forEach(function(c){box.appendChild(c);});}
sel.addEventListener('change',sort);sort();
Array.prototype.forEach.call(box.querySelectorAll('.card'),function(c){var v=c.querySelector('video');if(!v)return;
 function play(){c.classList.add('playing');var p=v.play();if(p&&p.catch)p.catch(function(){});}
 function stop(){c.classList.remove('playing');v.pause();}
 c.addEventListener('mouseenter',play);c.addEventListener('mouseleave',stop);
 c.querySelector('.media').addEventListener('click',function(e){if(!c.classList.contains('playing')){
  e.preventDefault();play();}});});})();
