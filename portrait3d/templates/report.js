(function(){var mv=document.getElementById('mesh');if(!mv||!window.P3D_MODEL)return;
mv.addEventListener('load',function(){if(!mv.model)return;mv.model.materials.forEach(function(m){
 /* the texture (or vertex colours) is the albedo: matte, whatever the file says (glTF's default is metallic) */
 m.pbrMetallicRoughness.setMetallicFactor(0);m.pbrMetallicRoughness.setRoughnessFactor(1);});
 mv.dataset.loaded='1';});
mv.addEventListener('error',function(e){console.error('3D view: '+(e.detail&&e.detail.type||'error'));});
mv.src=window.P3D_MODEL;})();
